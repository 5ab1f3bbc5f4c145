// Argument checks of the bindings: each message names the tensor, what was expected and what was given, so an error
// from fusedssl.kernels._C reads like the Python-side checks of kernels/_checks.py.
#pragma once
#include <torch/extension.h>

#include <sstream>
#include <string>
#include <vector>

#include "kernels.h"

namespace fusedssl {

inline std::string shape_of(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
}

inline void check_dim(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, name, ": expected ", dim, " dimensions, got shape ", shape_of(t));
}

inline void check_same(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), name, ": expected the shape of ", ref_name, " ", shape_of(ref), ", got ",
              shape_of(t));
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, ": expected the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, ": expected ", ref_name, "'s device ", ref.device(), ", got ",
              t.device());
}

inline void check_stats(const at::Tensor& t, const char* name, int64_t d, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == d && t.is_contiguous(), name,
              ": expected a contiguous float32 vector of ", d, " values, got ", t.scalar_type(), " ", shape_of(t));
  TORCH_CHECK(t.device() == ref.device(), name, ": expected device ", ref.device(), ", got ", t.device());
}

inline DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK(false, name, ": expected float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return DType::f32;
}

inline void check_fp32_list(const std::vector<at::Tensor>& ts, const char* name) {
  for (size_t i = 0; i < ts.size(); ++i) {
    TORCH_CHECK(ts[i].is_cuda() && ts[i].scalar_type() == at::kFloat && ts[i].is_contiguous(), name, "[", i,
                "]: expected a contiguous float32 CUDA tensor, got ", ts[i].scalar_type(), " on ", ts[i].device(),
                ts[i].is_contiguous() ? "" : " (not contiguous)");
  }
}

inline void check_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error ", cudaGetErrorString(err));
}

}  // namespace fusedssl
