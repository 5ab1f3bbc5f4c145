// Python bindings of fusedssl.kernels._C: the only file that includes torch and pybind11. It checks arguments
// (checks.h), allocates outputs with torch's caching allocator and launches the torch-free kernels of the .cu files
// on the current stream. kernels/normalize.py and kernels/lars.py wrap these in custom ops / providers.
#include <ATen/Parallel.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <string>
#include <tuple>

#include "checks.h"

namespace fusedssl {
namespace {

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// Column (rows=false) or row (rows=true) normalisation; returns (y, mean, r, beta) as the Triton op does.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> col_norm(const at::Tensor& z, int64_t mode, double eps,
                                                                     bool rows) {
  check_cuda(z, "z");
  check_dim(z, "z", 2);
  TORCH_CHECK(mode >= 0 && mode <= 4, "mode: expected 0..4 (center, bn, std, l2, std_l2), got ", mode);
  const DType dt = dtype_of(z, "z");
  const c10::cuda::CUDAGuard guard(z.device());
  auto y = at::empty_like(z, at::MemoryFormat::Contiguous);
  const int64_t n = rows ? z.size(1) : z.size(0), d = rows ? z.size(0) : z.size(1);
  TORCH_CHECK(n >= 2 || mode == 3, "z: expected at least 2 samples per column, got ", n);
  auto opts = z.options().dtype(at::kFloat);
  auto mean = at::empty({d}, opts), r = at::empty({d}, opts), beta = at::empty({d}, opts);
  const int64_t s_zn = rows ? z.stride(1) : z.stride(0), s_zd = rows ? z.stride(0) : z.stride(1);
  const int64_t s_yn = rows ? y.stride(1) : y.stride(0), s_yd = rows ? y.stride(0) : y.stride(1);
  check_cuda_error(col_norm_forward(z.data_ptr(), y.data_ptr(), mean.data_ptr<float>(), r.data_ptr<float>(),
                                    beta.data_ptr<float>(), n, d, s_zn, s_zd, s_yn, s_yd, dt, static_cast<int>(mode),
                                    static_cast<float>(eps), stream_of(z)),
                   "col_norm");
  return {y, mean, r, beta};
}

at::Tensor col_norm_bwd(const at::Tensor& g, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& r,
                        const at::Tensor& beta, bool center, bool rows) {
  check_cuda(z, "z");
  check_dim(z, "z", 2);
  check_same(g, z, "g", "z");
  const DType dt = dtype_of(z, "z");
  const int64_t n = rows ? z.size(1) : z.size(0), d = rows ? z.size(0) : z.size(1);
  check_stats(mean, "mean", d, z);
  check_stats(r, "r", d, z);
  check_stats(beta, "beta", d, z);
  const c10::cuda::CUDAGuard guard(z.device());
  auto dz = at::empty_like(z, at::MemoryFormat::Contiguous);
  const int64_t s_gn = rows ? g.stride(1) : g.stride(0), s_gd = rows ? g.stride(0) : g.stride(1);
  const int64_t s_zn = rows ? z.stride(1) : z.stride(0), s_zd = rows ? z.stride(0) : z.stride(1);
  const int64_t s_dn = rows ? dz.stride(1) : dz.stride(0), s_dd = rows ? dz.stride(0) : dz.stride(1);
  check_cuda_error(col_norm_backward(g.data_ptr(), z.data_ptr(), mean.data_ptr<float>(), r.data_ptr<float>(),
                                     beta.data_ptr<float>(), dz.data_ptr(), n, d, s_gn, s_gd, s_zn, s_zd, s_dn, s_dd,
                                     dt, center, stream_of(z)),
                   "col_norm_bwd");
  return dz;
}

// In place: c (D x D fp32 contiguous, the scaled cross-covariance from a GEMM) becomes G = dL/dC; returns the loss.
// CPU tensors run the kernel's row function serially on the host (the tests' way to check its arithmetic).
at::Tensor cov_loss_epilogue_(at::Tensor c, double w_diag, double t_diag, double w_off, double t_off) {
  check_dim(c, "c", 2);
  TORCH_CHECK(c.size(0) == c.size(1), "c: expected a square matrix, got shape ", shape_of(c));
  TORCH_CHECK(c.scalar_type() == at::kFloat && c.is_contiguous(), "c: expected contiguous float32, got ",
              c.scalar_type(), c.is_contiguous() ? "" : " (not contiguous)");
  if (c.is_cpu())
    return at::scalar_tensor(cov_loss_epilogue_host(c.data_ptr<float>(), c.size(0), static_cast<float>(w_diag),
                                                    static_cast<float>(t_diag), static_cast<float>(w_off),
                                                    static_cast<float>(t_off)),
                             c.options());
  check_cuda(c, "c");
  const c10::cuda::CUDAGuard guard(c.device());
  const int64_t d = c.size(0);
  auto partial = at::empty({cov_epilogue_blocks(d)}, c.options());
  auto loss = at::empty({}, c.options());
  check_cuda_error(cov_loss_epilogue(c.data_ptr<float>(), partial.data_ptr<float>(), loss.data_ptr<float>(), d,
                                     static_cast<float>(w_diag), static_cast<float>(t_diag), static_cast<float>(w_off),
                                     static_cast<float>(t_off), stream_of(c)),
                   "cov_loss_epilogue_");
  return loss;
}

// Eigendecomposition of a symmetric a (n x n fp32, n even) from the warm-start basis v0 (identity for a cold start):
// returns (s, v, p, info) as sym_eig_jacobi in kernels.h; blocks > 1 asks for the multi-block variant with at most that
// many blocks. CUDA tensors run the kernels; CPU tensors run the same schedule serially on the host (sym_eig_jacobi_host,
// with the multi-block kernel's double-buffered data flow where blocks > 1), which is how the tests check the arithmetic
// without a GPU.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> jacobi_eigh(const at::Tensor& a, const at::Tensor& v0,
                                                                       int64_t max_sweeps, double tol, double eps,
                                                                       double convert, int64_t blocks) {
  check_dim(a, "a", 2);
  const int64_t n = a.size(0);
  TORCH_CHECK(a.size(1) == n, "a: expected a square matrix, got shape ", shape_of(a));
  TORCH_CHECK(n >= 2 && n <= kMaxEighN && n % 2 == 0, "a: expected an even size n in [2, ", kMaxEighN,
              "] (pad odd sizes), got n = ", n);
  TORCH_CHECK(a.scalar_type() == at::kFloat && a.is_contiguous(), "a: expected contiguous float32, got ",
              a.scalar_type(), a.is_contiguous() ? "" : " (not contiguous)");
  check_same(v0, a, "v0", "a");
  TORCH_CHECK(max_sweeps >= 1 && max_sweeps <= 100, "max_sweeps: expected 1..100, got ", max_sweeps);
  TORCH_CHECK(tol >= 0.0, "tol: expected >= 0, got ", tol);
  TORCH_CHECK(convert > 0.0, "convert: expected > 0, got ", convert);
  auto v = v0.contiguous().clone();
  auto s = at::empty({n}, a.options()), p = at::empty({n}, a.options());
  auto info = at::empty({2}, a.options().dtype(at::kInt));
  TORCH_CHECK(blocks >= 0, "blocks: expected 0 or 1 (one block) or > 1 (the multi-block variant), got ", blocks);
  int grid = 1;
  if (blocks > 1 && !a.is_cpu()) {
    const c10::cuda::CUDAGuard guard(a.device());
    grid = jacobi_grid_blocks(n, static_cast<int>(std::min<int64_t>(blocks, 1 << 20)));
    TORCH_CHECK(grid > 1, "blocks: the multi-block variant needs cooperative launches, which ", a.device(),
                " does not support; use blocks=1");
  }
  auto scratch = at::empty({jacobi_scratch_floats(n, a.is_cpu() ? (blocks > 1 ? 2 : 1) : grid)}, a.options());
  auto rots = at::empty({2 * jacobi_record_size(n, static_cast<int>(max_sweeps))}, a.options());
  auto* rot_ptr = reinterpret_cast<float2*>(rots.data_ptr<float>());
  if (a.is_cpu()) {
    sym_eig_jacobi_host(a.data_ptr<float>(), v.data_ptr<float>(), s.data_ptr<float>(), p.data_ptr<float>(),
                     info.data_ptr<int>(), scratch.data_ptr<float>(), rot_ptr, n, static_cast<int>(max_sweeps),
                     static_cast<float>(tol), static_cast<float>(eps), static_cast<float>(convert), blocks > 1);
    return {s, v, p, info};
  }
  check_cuda(a, "a");
  const c10::cuda::CUDAGuard guard(a.device());
  check_cuda_error(sym_eig_jacobi(a.data_ptr<float>(), v.data_ptr<float>(), s.data_ptr<float>(), p.data_ptr<float>(),
                               info.data_ptr<int>(), scratch.data_ptr<float>(), rot_ptr, n,
                               static_cast<int>(max_sweeps), static_cast<float>(tol), static_cast<float>(eps),
                               static_cast<float>(convert), grid, stream_of(a)),
                   "jacobi_eigh");
  return {s, v, p, info};
}

// Fused photometric augmentation of uint8 views x (n, h, w, 3) on the CPU (photometric.cpp): returns the normalised
// float32 (n, h, w, 3) views; samples are split over torch's intra-op threads.
at::Tensor photometric(const at::Tensor& x, const at::Tensor& bright, const at::Tensor& contrast,
                       const at::Tensor& matrix, const at::Tensor& colour, const at::Tensor& taps,
                       const at::Tensor& radius, const at::Tensor& solarize, std::vector<double> mean,
                       std::vector<double> std) {
  TORCH_CHECK(x.is_cpu(), "x: expected a CPU tensor (the CPU data pipeline's op), got ", x.device());
  check_dim(x, "x", 4);
  TORCH_CHECK(x.scalar_type() == at::kByte && x.is_contiguous() && x.size(3) == 3,
              "x: expected contiguous uint8 (n, h, w, 3), got ", x.scalar_type(), " ", shape_of(x),
              x.is_contiguous() ? "" : " (not contiguous)");
  const int64_t n = x.size(0);
  auto per_sample = [n](const at::Tensor& t, const char* name, at::ScalarType type, int64_t width) {
    TORCH_CHECK(t.is_cpu() && t.scalar_type() == type && t.is_contiguous(), name, ": expected a contiguous CPU ",
                type, " tensor, got ", t.scalar_type(), " on ", t.device());
    TORCH_CHECK(t.dim() == (width ? 2 : 1) && t.size(0) == n && (!width || t.size(1) >= width), name,
                ": expected ", n, " rows", width ? " of at least " + std::to_string(width) + " columns" : "",
                ", got shape ", shape_of(t));
  };
  per_sample(bright, "bright", at::kFloat, 0);
  per_sample(contrast, "contrast", at::kFloat, 0);
  per_sample(matrix, "matrix", at::kFloat, 9);
  per_sample(colour, "colour", at::kByte, 0);
  per_sample(taps, "taps", at::kFloat, 1);
  per_sample(radius, "radius", at::kInt, 0);
  per_sample(solarize, "solarize", at::kByte, 0);
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, "mean, std: expected 3 values each, got ", mean.size(), " and ",
              std.size());
  const int64_t max_radius = n ? radius.max().item<int32_t>() : 0;
  TORCH_CHECK(n == 0 || radius.min().item<int32_t>() >= 0, "radius: expected >= 0");
  TORCH_CHECK(2 * max_radius + 1 <= taps.size(1), "taps: a radius of ", max_radius, " needs ", 2 * max_radius + 1,
              " taps per row, got ", taps.size(1));
  PhotoArgs a{bright.data_ptr<float>(), contrast.data_ptr<float>(), matrix.data_ptr<float>(),
              colour.data_ptr<uint8_t>(), taps.data_ptr<float>(), taps.size(1), radius.data_ptr<int32_t>(),
              solarize.data_ptr<uint8_t>(), {}, {}};
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std[c] > 0.0, "std: expected > 0, got ", std[c]);
    a.scale[c] = static_cast<float>(1.0 / (255.0 * std[c]));  // inputs are on the 0..255 scale
    a.shift[c] = static_cast<float>(-mean[c] / std[c]);
  }
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  const int64_t h = x.size(1), w = x.size(2);
  const uint8_t* xp = x.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) { photometric_host(xp, op, h, w, a, begin, end); });
  return out;
}

// The device-resident table of a tensor list (pointers, sizes, flags, chunks), built on the host and copied in one
// transfer; the returned tensor owns the memory and must outlive the launch (the caching allocator keeps it ordered
// on the stream).
struct Table {
  at::Tensor storage;
  TensorTable view;
};

Table make_table(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                 const std::vector<at::Tensor>* c, const std::vector<bool>* adapt) {
  const int64_t t = static_cast<int64_t>(a.size());
  std::vector<int32_t> chunk_tensor;
  std::vector<int64_t> chunk_start, first_chunk;
  for (int64_t i = 0; i < t; ++i) {
    first_chunk.push_back(static_cast<int64_t>(chunk_tensor.size()));
    for (int64_t s = 0; s < a[i].numel(); s += kChunk) {
      chunk_tensor.push_back(static_cast<int32_t>(i));
      chunk_start.push_back(s);
    }
  }
  const int64_t chunks = static_cast<int64_t>(chunk_tensor.size());
  first_chunk.push_back(chunks);
  // layout (8-byte slots): param[t] grad[t] buf[t] numel[t] first_chunk[t + 1] chunk_start[chunks] |
  // chunk_tensor (4 B each) | adapt (1 B each)
  const int64_t slots = 5 * t + 1 + chunks;
  const int64_t bytes = slots * 8 + chunks * 4 + t + 8;
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* p64 = reinterpret_cast<int64_t*>(host.data_ptr<uint8_t>());
  for (int64_t i = 0; i < t; ++i) {
    p64[i] = reinterpret_cast<int64_t>(a[i].data_ptr());
    p64[t + i] = reinterpret_cast<int64_t>(b[i].data_ptr());
    p64[2 * t + i] = c ? reinterpret_cast<int64_t>((*c)[i].data_ptr()) : 0;
    p64[3 * t + i] = a[i].numel();
  }
  for (int64_t i = 0; i <= t; ++i) p64[4 * t + i] = first_chunk[i];
  for (int64_t k = 0; k < chunks; ++k) p64[5 * t + 1 + k] = chunk_start[k];
  auto* p32 = reinterpret_cast<int32_t*>(p64 + slots);
  for (int64_t k = 0; k < chunks; ++k) p32[k] = chunk_tensor[k];
  auto* p8 = reinterpret_cast<uint8_t*>(p32 + chunks);
  for (int64_t i = 0; i < t; ++i) p8[i] = adapt ? static_cast<uint8_t>((*adapt)[i]) : 0;
  auto dev = host.to(a[0].device(), /*non_blocking=*/true);
  auto* d64 = reinterpret_cast<int64_t*>(dev.data_ptr<uint8_t>());
  TensorTable v;
  v.param = reinterpret_cast<float**>(d64);
  v.grad = reinterpret_cast<float**>(d64 + t);
  v.buf = reinterpret_cast<float**>(d64 + 2 * t);
  v.numel = d64 + 3 * t;
  v.first_chunk = d64 + 4 * t;
  v.chunk_start = d64 + 5 * t + 1;
  v.chunk_tensor = reinterpret_cast<const int32_t*>(d64 + slots);
  v.adapt = reinterpret_cast<const uint8_t*>(reinterpret_cast<const int32_t*>(d64 + slots) + chunks);
  v.chunks = chunks;
  v.tensors = t;
  return {dev, v};
}

void lars_step_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads, std::vector<at::Tensor> bufs,
                std::vector<bool> adapt, double lr, double momentum, double weight_decay, double eta) {
  TORCH_CHECK(params.size() == grads.size() && params.size() == bufs.size() && params.size() == adapt.size(),
              "lars_step_: params, grads, bufs and adapt must have the same length, got ", params.size(), ", ",
              grads.size(), ", ", bufs.size(), ", ", adapt.size());
  if (params.empty()) return;
  check_fp32_list(params, "params", params[0]);
  check_fp32_list(grads, "grads", params[0]);
  check_fp32_list(bufs, "bufs", params[0]);
  for (size_t i = 0; i < params.size(); ++i) {
    check_same_layout(grads[i], params[i], "grads", "params", i);
    check_same_layout(bufs[i], params[i], "bufs", "params", i);
  }
  const c10::cuda::CUDAGuard guard(params[0].device());
  Table table = make_table(params, grads, &bufs, &adapt);
  auto scratch = at::empty({lars_scratch_floats(table.view)}, params[0].options());
  check_cuda_error(lars_step(table.view, scratch.data_ptr<float>(), static_cast<float>(lr), nullptr,
                             static_cast<float>(momentum), static_cast<float>(weight_decay), static_cast<float>(eta),
                             stream_of(params[0])),
                   "lars_step_");
}

void ema_(std::vector<at::Tensor> teacher, std::vector<at::Tensor> online, double tau) {
  TORCH_CHECK(teacher.size() == online.size(), "ema_: teacher and online must have the same length, got ",
              teacher.size(), " and ", online.size());
  if (teacher.empty()) return;
  check_fp32_list(teacher, "teacher", teacher[0]);
  check_fp32_list(online, "online", teacher[0]);
  for (size_t i = 0; i < teacher.size(); ++i) check_same_layout(online[i], teacher[i], "online", "teacher", i);
  const c10::cuda::CUDAGuard guard(teacher[0].device());
  Table table = make_table(teacher, online, nullptr, nullptr);
  const double weight = 1.0 - tau;  // in double: see ema_update
  check_cuda_error(ema_update(table.view, static_cast<float>(weight), stream_of(teacher[0])), "ema_");
}

}  // namespace
}  // namespace fusedssl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedssl CUDA C++ kernels (csrc/): column normalisation, covariance-loss epilogue, Jacobi eigh, multi-tensor LARS and EMA, and the CPU photometric augmentation";
  m.def("col_norm", &fusedssl::col_norm, "column (or row) normalisation: (y, mean, r, beta)");
  m.def("col_norm_bwd", &fusedssl::col_norm_bwd, "closed-form backward of col_norm");
  m.def("cov_loss_epilogue_", &fusedssl::cov_loss_epilogue_, "covariance-loss epilogue: C -> G in place, returns L");
  m.def("lars_step_", &fusedssl::lars_step_, "multi-tensor LARS step (in place)");
  m.def("ema_", &fusedssl::ema_, "multi-tensor EMA update of a teacher (in place)");
  m.def("jacobi_eigh", &fusedssl::jacobi_eigh,
        "warm-started Jacobi eigendecomposition + DirectPred's spectral map: (s, v, p, info)", pybind11::arg("a"),
        pybind11::arg("v0"), pybind11::arg("max_sweeps"), pybind11::arg("tol"), pybind11::arg("eps"),
        pybind11::arg("convert"), pybind11::arg("blocks") = 1);
  m.def("photometric", &fusedssl::photometric,
        "fused colour jitter, grayscale, blur, solarisation and normalisation of uint8 NHWC views (CPU)");
}
