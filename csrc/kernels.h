// Torch-free entry points of the CUDA C++ kernels (one .cu per op family). bindings.cpp is the only caller; it checks
// the arguments, allocates outputs with torch and passes raw pointers, strides and the current stream.
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace fusedssl {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// normalize.cu: per-column statistics and y = (z - c mean) * r for the column modes of kernels/normalize.py
// (0 center, 1 bn, 2 std, 3 l2, 4 std_l2); mean, r, beta are fp32 (D,). Rows are columns of the transposed view
// (the caller swaps the strides). Strides are in elements.
cudaError_t col_norm_forward(const void* z, void* y, float* mean, float* r, float* beta, int64_t n, int64_t d,
                             int64_t s_zn, int64_t s_zd, int64_t s_yn, int64_t s_yd, DType dtype, int mode, float eps,
                             cudaStream_t stream);
// dz = r (g - c mean(g) - beta y sum(g y)), y recomputed in fp32 from z and the saved statistics.
cudaError_t col_norm_backward(const void* g, const void* z, const float* mean, const float* r, const float* beta,
                              void* dz, int64_t n, int64_t d, int64_t s_gn, int64_t s_gd, int64_t s_zn, int64_t s_zd,
                              int64_t s_dn, int64_t s_dd, DType dtype, bool center, cudaStream_t stream);

// covariance.cu: loss = sum w (c - t)^2 (w_d, t_d on the diagonal, w_o, t_o off it) over a D x D fp32 C, which is
// overwritten in place by G = dL/dC; partial is fp32 scratch of cov_epilogue_blocks(d) values, loss one fp32 value.
int cov_epilogue_blocks(int64_t d);
cudaError_t cov_loss_epilogue(float* cg, float* partial, float* loss, int64_t d, float w_diag, float t_diag,
                              float w_off, float t_off, cudaStream_t stream);
// The same row function on host memory, serially (the CPU tests' way to check its arithmetic): returns the loss.
float cov_loss_epilogue_host(float* cg, int64_t d, float w_diag, float t_diag, float w_off, float t_off);

// optim.cu: multi-tensor updates over fp32 tensors described by a device-resident table (see optim.cu).
struct TensorTable {
  float** param;       // (T,) parameter pointers
  float** grad;        // (T,) gradient pointers (LARS) / online parameter pointers (EMA)
  float** buf;         // (T,) momentum buffer pointers (LARS; unused by EMA)
  const int64_t* numel;  // (T,)
  const uint8_t* adapt;  // (T,) LARS: 1 = trust ratio and weight decay, 0 = plain momentum SGD (biases, norms)
  const int32_t* chunk_tensor;  // (C,) tensor of each chunk
  const int64_t* chunk_start;   // (C,) first element of each chunk
  const int64_t* first_chunk;   // (T + 1,) tensor i owns chunks first_chunk[i] .. first_chunk[i + 1] - 1
  int64_t chunks;
  int64_t tensors;
};
constexpr int64_t kChunk = 16384;
// LARS: g' = g + wd p (adapt only); trust = eta |p| / |g'| where both > 0 (adapt only), else 1; buf = m buf + trust g';
// p -= lr buf. scratch is fp32, lars_scratch_floats(t) values (per-chunk partial norms, per-tensor trust ratios). lr
// may be read from device memory (lr_ptr) so a schedule needs no sync. Deterministic (no atomics).
int64_t lars_scratch_floats(const TensorTable& t);
cudaError_t lars_step(const TensorTable& t, float* scratch, float lr, const float* lr_ptr, float momentum,
                      float weight_decay, float eta, cudaStream_t stream);
// EMA: teacher += weight (online - teacher), weight = 1 - tau computed by the caller in double (fp32 rounding of tau
// near 1 would move the step weight by 0.14% at tau = 0.99999), all tensors in one launch (param = teacher, grad =
// online).
cudaError_t ema_update(const TensorTable& t, float weight, cudaStream_t stream);

// directpred.cu: symmetric eigendecomposition of a (n x n, fp32, n even, n <= kMaxEighN) by cyclic Jacobi, for
// DirectPred's predictor. v holds the warm-start basis U0 on entry (a is then U0' F U0) and U0 V on exit; s gets the
// eigenvalues (unsorted), p the spectral map max((max(s, 0) / max s)^(1/convert) + eps, 1e-4), info = {sweeps that
// rotated, converged 0/1}, all on the device. blocks <= 1: the one-block kernel; blocks > 1: the multi-block variant
// (a cooperative launch of that many blocks, from jacobi_grid_blocks, which returns 0 where the device cannot launch
// it cooperatively). scratch: jacobi_scratch_floats(n, blocks) floats; rots: jacobi_record_size(n, max_sweeps).
constexpr int64_t kMaxEighN = 512;
int64_t jacobi_scratch_floats(int64_t n, int blocks);
int64_t jacobi_record_size(int64_t n, int max_sweeps);
int jacobi_grid_blocks(int64_t n, int requested);
cudaError_t sym_eig_jacobi(const float* a, float* v, float* s, float* p, int* info, float* scratch, float2* rots,
                           int64_t n, int max_sweeps, float tol, float eps, float convert, int blocks,
                           cudaStream_t stream);
// The same schedule on host memory, serially (the CPU tests' way to check the kernel's arithmetic); double_buffer
// follows the multi-block kernel's data flow (each round read from one copy of the packed matrix and written, identity
// blocks copied, into the other: scratch then holds jacobi_scratch_floats(n, 2) floats).
void sym_eig_jacobi_host(const float* a, float* v, float* s, float* p, int* info, float* scratch, float2* rots,
                         int64_t n, int max_sweeps, float tol, float eps, float convert, bool double_buffer);

// photometric.cpp: colour jitter, grayscale, Gaussian blur, solarisation and normalisation of uint8 NHWC views (n, h, w,
// 3, contiguous) into float NHWC, per sample k: v = min(bright x, 255); v = clamp(contrast v + (1 - contrast) m) with m
// the mean luma of min(bright x, 255); v = clamp(matrix v) (3x3 row-major: saturation, hue, grayscale), all only where
// colour[k]; blur with taps[k, 0..2 radius] (radius 0: none; reflect-101 border); v -> 255 - v above 127.5 where
// solarize[k]; out = v scale + shift per channel. Host only: bindings.cpp splits samples [begin, end) over threads.
struct PhotoArgs {
  const float* bright;     // (n,)
  const float* contrast;   // (n,)
  const float* matrix;     // (n, 9)
  const uint8_t* colour;   // (n,)
  const float* taps;       // (n, taps_stride)
  int64_t taps_stride;
  const int32_t* radius;   // (n,)
  const uint8_t* solarize; // (n,)
  float scale[3];
  float shift[3];
};
void photometric_host(const uint8_t* x, float* out, int64_t h, int64_t w, const PhotoArgs& a, int64_t begin,
                      int64_t end);

}  // namespace fusedssl
