// Column statistics + normalisation, forward and backward, for every column mode of kernels/normalize.py.
// One block owns 32 columns; its 32 x 8 threads stride over the rows (threadIdx.x walks the columns, so loads are
// coalesced along a contiguous D). Statistics use sums shifted by the column's first value, so the variance is not
// a difference of large numbers (a column of 1e4 + N(0, 1) keeps its variance); all arithmetic is fp32.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.h"

namespace fusedssl {
namespace {

constexpr int kCols = 32;
constexpr int kRows = 8;

template <typename T> __device__ __forceinline__ float load(const T* p) { return static_cast<float>(*p); }
template <> __device__ __forceinline__ float load<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <typename T> __device__ __forceinline__ void store(T* p, float v) { *p = static_cast<T>(v); }
template <> __device__ __forceinline__ void store<__half>(__half* p, float v) { *p = __float2half_rn(v); }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, float v) {
  *p = __float2bfloat16_rn(v);
}

// Sum the kRows partial values of each column held by threadIdx.y = 0..kRows-1; every thread gets the total.
__device__ __forceinline__ float column_sum(float v, float (*scratch)[kCols + 1]) {
  scratch[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < kRows; ++i) s += scratch[i][threadIdx.x];
  __syncthreads();
  return s;
}

template <typename T>
__global__ void __launch_bounds__(kCols * kRows) col_stats_kernel(const T* __restrict__ z, T* __restrict__ y,
    float* mean_out, float* r_out, float* beta_out, int64_t n, int64_t d, int64_t s_zn, int64_t s_zd, int64_t s_yn,
    int64_t s_yd, int mode, float eps, float sqrt_d) {
  __shared__ float scratch[kRows][kCols + 1];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool col = j < d;
  const float z0 = col ? load(z + j * s_zd) : 0.f;
  float s1 = 0.f, s2 = 0.f;
  if (col) {
    for (int64_t i = threadIdx.y; i < n; i += kRows) {
      const float x = load(z + i * s_zn + j * s_zd) - z0;
      s1 += x;
      s2 += x * x;
    }
  }
  s1 = column_sum(s1, scratch);
  s2 = column_sum(s2, scratch);
  const float nf = static_cast<float>(n);
  float mean, ss;
  if (mode == 3) {  // l2: no centring, ||z||^2 = sum (x + z0)^2
    mean = 0.f;
    ss = s2 + 2.f * z0 * s1 + nf * z0 * z0;
  } else {
    mean = z0 + s1 / nf;
    ss = fmaxf(s2 - s1 * s1 / nf, 0.f);
  }
  float r = 1.f, beta = 0.f;
  if (mode == 1) {
    r = rsqrtf(ss / nf + eps);
    beta = 1.f / nf;
  } else if (mode == 2) {
    r = rsqrtf(ss / (nf - 1.f));
    beta = 1.f / (nf - 1.f);
  } else if (mode >= 3) {
    const float norm = sqrtf(ss);
    const bool clamped = norm <= eps;
    r = 1.f / fmaxf(norm, eps);
    beta = clamped ? 0.f : 1.f;
    if (mode == 4) {
      r *= sqrt_d;
      beta = clamped ? 0.f : 1.f / (sqrt_d * sqrt_d);
    }
  }
  if (!col) return;
  if (threadIdx.y == 0) {
    mean_out[j] = mean;
    r_out[j] = r;
    beta_out[j] = beta;
  }
  for (int64_t i = threadIdx.y; i < n; i += kRows) store(y + i * s_yn + j * s_yd, (load(z + i * s_zn + j * s_zd) - mean) * r);
}

template <typename T>
__global__ void __launch_bounds__(kCols * kRows) col_norm_bwd_kernel(const T* __restrict__ g, const T* __restrict__ z,
    const float* mean_in, const float* r_in, const float* beta_in, T* __restrict__ dz, int64_t n, int64_t d,
    int64_t s_gn, int64_t s_gd, int64_t s_zn, int64_t s_zd, int64_t s_dn, int64_t s_dd, bool center) {
  __shared__ float scratch[kRows][kCols + 1];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool col = j < d;
  const float mean = col ? mean_in[j] : 0.f, r = col ? r_in[j] : 0.f;
  float sg = 0.f, sgy = 0.f;
  if (col) {
    for (int64_t i = threadIdx.y; i < n; i += kRows) {
      const float gi = load(g + i * s_gn + j * s_gd);
      sg += gi;
      sgy += gi * (load(z + i * s_zn + j * s_zd) - mean) * r;  // y in fp32: a half-precision y breaks the cancellation
    }
  }
  sg = column_sum(sg, scratch);
  sgy = column_sum(sgy, scratch);
  if (!col) return;
  const float k = beta_in[j] * sgy;
  const float m = center ? sg / static_cast<float>(n) : 0.f;
  for (int64_t i = threadIdx.y; i < n; i += kRows) {
    const float y = (load(z + i * s_zn + j * s_zd) - mean) * r;
    store(dz + i * s_dn + j * s_dd, r * (load(g + i * s_gn + j * s_gd) - m - k * y));
  }
}

template <typename T>
cudaError_t forward_t(const void* z, void* y, float* mean, float* r, float* beta, int64_t n, int64_t d, int64_t s_zn,
                      int64_t s_zd, int64_t s_yn, int64_t s_yd, int mode, float eps, cudaStream_t stream) {
  const dim3 block(kCols, kRows), grid(static_cast<unsigned>((d + kCols - 1) / kCols));
  col_stats_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(z), static_cast<T*>(y), mean, r, beta, n, d,
                                                  s_zn, s_zd, s_yn, s_yd, mode, eps, sqrtf(static_cast<float>(d)));
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_t(const void* g, const void* z, const float* mean, const float* r, const float* beta, void* dz,
                       int64_t n, int64_t d, int64_t s_gn, int64_t s_gd, int64_t s_zn, int64_t s_zd, int64_t s_dn,
                       int64_t s_dd, bool center, cudaStream_t stream) {
  const dim3 block(kCols, kRows), grid(static_cast<unsigned>((d + kCols - 1) / kCols));
  col_norm_bwd_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(g), static_cast<const T*>(z), mean, r, beta,
                                                     static_cast<T*>(dz), n, d, s_gn, s_gd, s_zn, s_zd, s_dn, s_dd,
                                                     center);
  return cudaGetLastError();
}

}  // namespace

cudaError_t col_norm_forward(const void* z, void* y, float* mean, float* r, float* beta, int64_t n, int64_t d,
                             int64_t s_zn, int64_t s_zd, int64_t s_yn, int64_t s_yd, DType dtype, int mode, float eps,
                             cudaStream_t stream) {
  switch (dtype) {
    case DType::f16: return forward_t<__half>(z, y, mean, r, beta, n, d, s_zn, s_zd, s_yn, s_yd, mode, eps, stream);
    case DType::bf16:
      return forward_t<__nv_bfloat16>(z, y, mean, r, beta, n, d, s_zn, s_zd, s_yn, s_yd, mode, eps, stream);
    default: return forward_t<float>(z, y, mean, r, beta, n, d, s_zn, s_zd, s_yn, s_yd, mode, eps, stream);
  }
}

cudaError_t col_norm_backward(const void* g, const void* z, const float* mean, const float* r, const float* beta,
                              void* dz, int64_t n, int64_t d, int64_t s_gn, int64_t s_gd, int64_t s_zn, int64_t s_zd,
                              int64_t s_dn, int64_t s_dd, DType dtype, bool center, cudaStream_t stream) {
  switch (dtype) {
    case DType::f16:
      return backward_t<__half>(g, z, mean, r, beta, dz, n, d, s_gn, s_gd, s_zn, s_zd, s_dn, s_dd, center, stream);
    case DType::bf16:
      return backward_t<__nv_bfloat16>(g, z, mean, r, beta, dz, n, d, s_gn, s_gd, s_zn, s_zd, s_dn, s_dd, center,
                                       stream);
    default:
      return backward_t<float>(g, z, mean, r, beta, dz, n, d, s_gn, s_gd, s_zn, s_zd, s_dn, s_dd, center, stream);
  }
}

}  // namespace fusedssl
