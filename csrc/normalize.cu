// Column statistics + normalisation, forward and backward, for every column mode of kernels/normalize.py.
// One block owns 32 columns; its 32 x 8 threads stride over the rows (threadIdx.x walks the columns, so loads are
// coalesced along a contiguous D). Statistics use sums shifted by the column's first value, so the variance is not
// a difference of large numbers (a column of 1e4 + N(0, 1) keeps its variance); all arithmetic is fp32.
// Where the columns are contiguous (stride 1, D and the row strides multiples of the vector, 16-byte aligned bases),
// each thread owns 16 bytes of adjacent columns (4 fp32 or 8 bf16/fp16) and every load and store is one 16-byte
// access, so a warp moves 512 contiguous bytes per row; otherwise one column per thread.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "kernels.h"

namespace fusedssl {
namespace {

constexpr int kCols = 32;
constexpr int kRows = 8;
// The l2 mode needs sum z^2, not a variance: shifting by z0 and adding the shift back (s2 + 2 z0 s1 + n z0^2)
// cancels catastrophically when the first row is atypical, so that mode accumulates unshifted sums.
constexpr int kShiftless = 3;

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

// 16 bytes of T as kVec<T> fp32 values.
template <typename T> constexpr int kVec = 16 / sizeof(T);
template <typename T> __device__ __forceinline__ void load_vec(const T* p, float (&out)[kVec<T>]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec<T>; ++k) out[k] = load(e + k);
}
template <typename T> __device__ __forceinline__ void store_vec(T* p, const float (&v)[kVec<T>]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec<T>; ++k) store(e + k, v[k]);
  *reinterpret_cast<uint4*>(p) = raw;
}

// The column's (mean, r, beta) of kernels/normalize.py from its sums s1 = sum (z - z0), s2 = sum (z - z0)^2.
struct Stats {
  float mean, r, beta;
};
__device__ __forceinline__ Stats column_stats(int mode, float nf, float z0, float s1, float s2, float eps,
                                              float sqrt_d) {
  float mean, ss;
  if (mode == 3) {  // l2: no centring and no shift (z0 = 0: see kShiftless), so s2 is sum z^2 itself
    mean = 0.f;
    ss = s2;
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
  return {mean, r, beta};
}

template <typename T>
__global__ void __launch_bounds__(kCols * kRows) col_stats_kernel(const T* __restrict__ z, T* __restrict__ y,
    float* mean_out, float* r_out, float* beta_out, int64_t n, int64_t d, int64_t s_zn, int64_t s_zd, int64_t s_yn,
    int64_t s_yd, int mode, float eps, float sqrt_d) {
  __shared__ float scratch[kRows][kCols + 1];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x;
  const bool col = j < d;
  const float z0 = col && mode != kShiftless ? load(z + j * s_zd) : 0.f;
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
  const Stats st = column_stats(mode, static_cast<float>(n), z0, s1, s2, eps, sqrt_d);
  if (!col) return;
  if (threadIdx.y == 0) {
    mean_out[j] = st.mean;
    r_out[j] = st.r;
    beta_out[j] = st.beta;
  }
  for (int64_t i = threadIdx.y; i < n; i += kRows)
    store(y + i * s_yn + j * s_yd, (load(z + i * s_zn + j * s_zd) - st.mean) * st.r);
}

// The same with kVec<T> adjacent columns per thread (contiguous columns; see the note at the top).
template <typename T>
__global__ void __launch_bounds__(kCols * kRows) col_stats_vec_kernel(const T* __restrict__ z, T* __restrict__ y,
    float* mean_out, float* r_out, float* beta_out, int64_t n, int64_t d, int64_t s_zn, int64_t s_yn, int mode,
    float eps, float sqrt_d) {
  constexpr int V = kVec<T>;
  __shared__ float scratch[kRows][kCols + 1];
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x) * V;
  const bool col = j < d;
  float z0[V], s1[V], s2[V], x[V];
#pragma unroll
  for (int k = 0; k < V; ++k) z0[k] = s1[k] = s2[k] = 0.f;
  if (col) {
    load_vec(z + j, z0);
    if (mode == kShiftless) {
#pragma unroll
      for (int k = 0; k < V; ++k) z0[k] = 0.f;
    }
    for (int64_t i = threadIdx.y; i < n; i += kRows) {
      load_vec(z + i * s_zn + j, x);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float u = x[k] - z0[k];
        s1[k] += u;
        s2[k] += u * u;
      }
    }
  }
  Stats st[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float a = column_sum(s1[k], scratch), b = column_sum(s2[k], scratch);
    st[k] = column_stats(mode, static_cast<float>(n), z0[k], a, b, eps, sqrt_d);
  }
  if (!col) return;
  if (threadIdx.y == 0)
#pragma unroll
    for (int k = 0; k < V; ++k) {
      mean_out[j + k] = st[k].mean;
      r_out[j + k] = st[k].r;
      beta_out[j + k] = st[k].beta;
    }
  for (int64_t i = threadIdx.y; i < n; i += kRows) {
    load_vec(z + i * s_zn + j, x);
#pragma unroll
    for (int k = 0; k < V; ++k) x[k] = (x[k] - st[k].mean) * st[k].r;
    store_vec(y + i * s_yn + j, x);
  }
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
__global__ void __launch_bounds__(kCols * kRows) col_norm_bwd_vec_kernel(const T* __restrict__ g,
    const T* __restrict__ z, const float* mean_in, const float* r_in, const float* beta_in, T* __restrict__ dz,
    int64_t n, int64_t d, int64_t s_gn, int64_t s_zn, int64_t s_dn, bool center) {
  constexpr int V = kVec<T>;
  __shared__ float scratch[kRows][kCols + 1];
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * kCols + threadIdx.x) * V;
  const bool col = j < d;
  float mean[V], r[V], sg[V], sgy[V], gv[V], zv[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    mean[k] = col ? mean_in[j + k] : 0.f;
    r[k] = col ? r_in[j + k] : 0.f;
    sg[k] = sgy[k] = 0.f;
  }
  if (col) {
    for (int64_t i = threadIdx.y; i < n; i += kRows) {
      load_vec(g + i * s_gn + j, gv);
      load_vec(z + i * s_zn + j, zv);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        sg[k] += gv[k];
        sgy[k] += gv[k] * (zv[k] - mean[k]) * r[k];
      }
    }
  }
  float kk[V], m[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float a = column_sum(sg[k], scratch), b = column_sum(sgy[k], scratch);
    kk[k] = col ? beta_in[j + k] * b : 0.f;
    m[k] = center ? a / static_cast<float>(n) : 0.f;
  }
  if (!col) return;
  for (int64_t i = threadIdx.y; i < n; i += kRows) {
    load_vec(g + i * s_gn + j, gv);
    load_vec(z + i * s_zn + j, zv);
#pragma unroll
    for (int k = 0; k < V; ++k) gv[k] = r[k] * (gv[k] - m[k] - kk[k] * (zv[k] - mean[k]) * r[k]);
    store_vec(dz + i * s_dn + j, gv);
  }
}

// Whether the 16-byte path applies: unit column strides, D and every row stride a multiple of the vector, aligned
// bases (a strided slice or an odd D takes the scalar kernels).
template <typename T>
bool vectorisable(int64_t d, std::initializer_list<std::pair<const void*, int64_t>> mats,
                  std::initializer_list<int64_t> col_strides) {
  constexpr int V = kVec<T>;
  if (d % V) return false;
  for (const int64_t s : col_strides)
    if (s != 1) return false;
  for (const auto& [ptr, row_stride] : mats)
    if (reinterpret_cast<uintptr_t>(ptr) % 16 || row_stride % V) return false;
  return true;
}

template <typename T>
cudaError_t forward_t(const void* z, void* y, float* mean, float* r, float* beta, int64_t n, int64_t d, int64_t s_zn,
                      int64_t s_zd, int64_t s_yn, int64_t s_yd, int mode, float eps, cudaStream_t stream) {
  const dim3 block(kCols, kRows);
  const float sqrt_d = sqrtf(static_cast<float>(d));
  if (vectorisable<T>(d, {{z, s_zn}, {y, s_yn}}, {s_zd, s_yd})) {
    const dim3 grid(static_cast<unsigned>((d + kCols * kVec<T> - 1) / (kCols * kVec<T>)));
    col_stats_vec_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(z), static_cast<T*>(y), mean, r, beta,
                                                        n, d, s_zn, s_yn, mode, eps, sqrt_d);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>((d + kCols - 1) / kCols));
  col_stats_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(z), static_cast<T*>(y), mean, r, beta, n, d,
                                                  s_zn, s_zd, s_yn, s_yd, mode, eps, sqrt_d);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_t(const void* g, const void* z, const float* mean, const float* r, const float* beta, void* dz,
                       int64_t n, int64_t d, int64_t s_gn, int64_t s_gd, int64_t s_zn, int64_t s_zd, int64_t s_dn,
                       int64_t s_dd, bool center, cudaStream_t stream) {
  const dim3 block(kCols, kRows);
  if (vectorisable<T>(d, {{g, s_gn}, {z, s_zn}, {dz, s_dn}}, {s_gd, s_zd, s_dd})) {
    const dim3 grid(static_cast<unsigned>((d + kCols * kVec<T> - 1) / (kCols * kVec<T>)));
    col_norm_bwd_vec_kernel<T><<<grid, block, 0, stream>>>(static_cast<const T*>(g), static_cast<const T*>(z), mean,
                                                           r, beta, static_cast<T*>(dz), n, d, s_gn, s_zn, s_dn,
                                                           center);
    return cudaGetLastError();
  }
  const dim3 grid(static_cast<unsigned>((d + kCols - 1) / kCols));
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
