// Covariance-loss epilogue for Barlow Twins, its HSIC variant and VICReg's covariance term (kernels/covariance.py):
//     L = sum_i w_d (c_ii - t_d)^2 + sum_{i != j} w_o (c_ij - t_o)^2,   G = dL/dC = 2 w (c - t)
// C (D x D, fp32, already scaled) comes from a cuBLAS GEMM; this pass reads it once, overwrites it with G in place
// (no second D x D buffer: 268 MB at D = 8192) and writes one loss partial per block (fixed rows per block); a second
// one-block pass sums the partials in a fixed order, so the loss is deterministic (no float atomics).
#include <cstdint>
#include <type_traits>

#include "kernels.h"
#include "reduce.cuh"

namespace fusedssl {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;        // loads in flight per thread
constexpr int64_t kMaxBlocks = 4096;

// One element's share of L, and G written over it.
__host__ __device__ inline float term(float& x, bool diag, float w_diag, float t_diag, float w_off, float t_off) {
  const float w = diag ? w_diag : w_off, t = diag ? t_diag : t_off;
  const float e = x - t;
  x = 2.f * w * e;
  return w * e * e;
}

// Row `row` of C (at r), items first, first + stride, ... (kVec: float4 items, else floats): G written over them,
// their share of L returned. The row is known, so the diagonal test needs no index division; each caller issues
// kUnroll loads before the first of their stores (an element-indexed loop with k / d and k % d kept one 4-byte load in
// flight per thread, each waiting on the previous store: about half of HBM bandwidth by the review's count).
template <bool kVec>
__host__ __device__ inline float epilogue_row(float* r, int64_t row, int64_t d, int64_t first, int64_t stride,
                                              float w_diag, float t_diag, float w_off, float t_off) {
  using Item = typename std::conditional<kVec, float4, float>::type;
  constexpr int kLanes = kVec ? 4 : 1;
  Item* items = reinterpret_cast<Item*>(r);
  const int64_t width = d / kLanes;
  float acc = 0.f;
  for (int64_t base = first; base < width; base += stride * kUnroll) {
    Item x[kUnroll] = {};
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * stride;
      if (j < width) x[u] = items[j];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = base + u * stride;
      if (j >= width) continue;
      const int64_t c = j * kLanes;
      if constexpr (kVec) {
        acc += term(x[u].x, c == row, w_diag, t_diag, w_off, t_off) +
               term(x[u].y, c + 1 == row, w_diag, t_diag, w_off, t_off) +
               term(x[u].z, c + 2 == row, w_diag, t_diag, w_off, t_off) +
               term(x[u].w, c + 3 == row, w_diag, t_diag, w_off, t_off);
      } else {
        acc += term(x[u], c == row, w_diag, t_diag, w_off, t_off);
      }
      items[j] = x[u];
    }
  }
  return acc;
}

// Whole rows per block (row, row + gridDim.x, ...), so each block's partial covers fixed rows.
template <bool kVec>
__global__ void __launch_bounds__(kThreads) cov_epilogue_kernel(float* __restrict__ cg, float* __restrict__ partial,
                                                                 int64_t d, float w_diag, float t_diag, float w_off,
                                                                 float t_off) {
  __shared__ float scratch[kThreads / 32];
  float acc = 0.f;
  for (int64_t row = blockIdx.x; row < d; row += gridDim.x)
    acc += epilogue_row<kVec>(cg + row * d, row, d, threadIdx.x, kThreads, w_diag, t_diag, w_off, t_off);
  acc = block_sum<kThreads>(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// float4 items where every row starts 16-byte aligned
inline bool vector_rows(const float* cg, int64_t d) { return d % 4 == 0 && reinterpret_cast<uintptr_t>(cg) % 16 == 0; }

__global__ void __launch_bounds__(kThreads) sum_kernel(const float* __restrict__ partial, int n, float* out) {
  __shared__ float scratch[kThreads / 32];
  float acc = 0.f;
  for (int i = threadIdx.x; i < n; i += kThreads) acc += partial[i];
  acc = block_sum<kThreads>(acc, scratch);
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

int cov_epilogue_blocks(int64_t d) { return static_cast<int>(d < 1 ? 1 : (d > kMaxBlocks ? kMaxBlocks : d)); }

cudaError_t cov_loss_epilogue(float* cg, float* partial, float* loss, int64_t d, float w_diag, float t_diag,
                              float w_off, float t_off, cudaStream_t stream) {
  const int blocks = cov_epilogue_blocks(d);
  if (vector_rows(cg, d))
    cov_epilogue_kernel<true><<<blocks, kThreads, 0, stream>>>(cg, partial, d, w_diag, t_diag, w_off, t_off);
  else
    cov_epilogue_kernel<false><<<blocks, kThreads, 0, stream>>>(cg, partial, d, w_diag, t_diag, w_off, t_off);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  sum_kernel<<<1, kThreads, 0, stream>>>(partial, blocks, loss);
  return cudaGetLastError();
}

float cov_loss_epilogue_host(float* cg, int64_t d, float w_diag, float t_diag, float w_off, float t_off) {
  const bool vec = vector_rows(cg, d);
  float loss = 0.f;
  for (int64_t row = 0; row < d; ++row)
    loss += vec ? epilogue_row<true>(cg + row * d, row, d, 0, 1, w_diag, t_diag, w_off, t_off)
                : epilogue_row<false>(cg + row * d, row, d, 0, 1, w_diag, t_diag, w_off, t_off);
  return loss;
}

}  // namespace fusedssl
