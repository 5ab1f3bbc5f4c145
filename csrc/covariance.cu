// Covariance-loss epilogue for Barlow Twins, its HSIC variant and VICReg's covariance term (kernels/covariance.py):
//     L = sum_i w_d (c_ii - t_d)^2 + sum_{i != j} w_o (c_ij - t_o)^2,   G = dL/dC = 2 w (c - t)
// C (D x D, fp32, already scaled) comes from a cuBLAS GEMM; this pass reads it once, overwrites it with G in place
// (no second D x D buffer: 268 MB at D = 8192) and writes one loss partial per block; a second one-block pass sums the
// partials in a fixed order, so the loss is deterministic (no float atomics).
#include "kernels.h"
#include "reduce.cuh"

namespace fusedssl {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) cov_epilogue_kernel(float* __restrict__ cg, float* __restrict__ partial,
                                                                 int64_t d, float w_diag, float t_diag, float w_off,
                                                                 float t_off) {
  __shared__ float scratch[kThreads / 32];
  const int64_t total = d * d;
  float acc = 0.f;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * kThreads) {
    const bool diag = (k / d) == (k % d);
    const float w = diag ? w_diag : w_off, t = diag ? t_diag : t_off;
    const float e = cg[k] - t;
    acc += w * e * e;
    cg[k] = 2.f * w * e;
  }
  acc = block_sum<kThreads>(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kThreads) sum_kernel(const float* __restrict__ partial, int n, float* out) {
  __shared__ float scratch[kThreads / 32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += kThreads) acc += partial[i];
  acc = block_sum<kThreads>(acc, scratch);
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

int cov_epilogue_blocks(int64_t d) {
  const int64_t want = (d * d + kThreads * 8 - 1) / (kThreads * 8);  // ~8 elements per thread
  return static_cast<int>(want < 1 ? 1 : (want > 4096 ? 4096 : want));
}

cudaError_t cov_loss_epilogue(float* cg, float* partial, float* loss, int64_t d, float w_diag, float t_diag,
                              float w_off, float t_off, cudaStream_t stream) {
  const int blocks = cov_epilogue_blocks(d);
  cov_epilogue_kernel<<<blocks, kThreads, 0, stream>>>(cg, partial, d, w_diag, t_diag, w_off, t_off);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  sum_kernel<<<1, kThreads, 0, stream>>>(partial, blocks, loss);
  return cudaGetLastError();
}

}  // namespace fusedssl
