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

// A tensor of a multi-tensor list: fp32 on the list's device (``first``: the list's first tensor), non-overlapping
// and dense (contiguous or channels-last: the kernels walk storage order).
inline void check_fp32_list(const std::vector<at::Tensor>& ts, const char* name, const at::Tensor& first) {
  for (size_t i = 0; i < ts.size(); ++i) {
    TORCH_CHECK(ts[i].is_cuda() && ts[i].scalar_type() == at::kFloat, name, "[", i,
                "]: expected a float32 CUDA tensor, got ", ts[i].scalar_type(), " on ", ts[i].device());
    TORCH_CHECK(ts[i].device() == first.device(), name, "[", i, "]: expected every tensor on ", first.device(),
                " (one launch serves the whole list), got ", ts[i].device());
    TORCH_CHECK(ts[i].is_non_overlapping_and_dense(), name, "[", i,
                "]: expected a dense tensor (contiguous or channels-last), got strides ", ts[i].strides(), " for shape ",
                shape_of(ts[i]));
  }
}

// t must match ref in shape, dtype, device and strides (element k of storage is the same index in both).
inline void check_same_layout(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name,
                              size_t i) {
  TORCH_CHECK(t.sizes() == ref.sizes() && t.strides() == ref.strides(), name, "[", i, "]: expected the shape ",
              shape_of(ref), " and strides ", ref.strides(), " of ", ref_name, "[", i, "], got ", shape_of(t),
              " with strides ", t.strides());
}

inline void check_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA error ", cudaGetErrorString(err));
}

}  // namespace fusedssl
