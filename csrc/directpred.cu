// Small symmetric eigendecomposition for DirectPred's predictor (kernels/directpred.py, methods.md §6.3, §16.3 item 5):
// cyclic Jacobi in one thread block, warm-started from the previous eigenvectors, with the spectral map
// p = max((max(s, 0) / max s)^(1/c) + eps, 1e-4) in the same kernel. Nothing is read back to the host: the sweep count
// and the convergence flag stay in device memory, so the predictor update never synchronises the host.
//
// Why Jacobi in one block: D <= 512 is far too small to fill a GPU (cuSOLVER's syevd costs ~ms of latency at D = 256),
// and F^ changes little between steps, so A = U0' F^ U0 with the previous eigenvectors U0 is nearly diagonal and a
// few sweeps finish it. Jacobi is also accurate for the small eigenvalues of a PSD matrix, which the square root of
// the spectral map amplifies.
//
// Schedule: the round-robin ("chess tournament") ordering, n - 1 rounds of n / 2 disjoint pairs per sweep. In a round,
// phase 1 computes every pair's rotation from the current A; phase 2 rotates every 2x2 block of A by its row pair and
// its column pair; the blocks are disjoint, so phase 2 needs no atomics, and blocks whose two rotations are both the
// identity (most of them once A is nearly diagonal) are skipped. A is kept as its packed upper triangle: in shared
// memory where it fits (n <= 336 on H100/H200 with their 227 KiB opt-in, n <= 284 on A100), else in a global scratch
// that stays in L2.
//
// The eigenvectors V = U0 J_1 J_2 ... are not carried by the serial kernel: it records every round's rotations, and a
// second kernel replays them on the rows of V, one warp per row (rows evolve independently), across the whole GPU.
//
// A multi-block variant (jacobi_grid_kernel) runs the same rounds with phase 2 spread over the whole GPU and one
// grid-wide barrier per round; which of the two is faster at a given n is for the GPU record (bench_directpred) to say.
//
// The same phase functions run on the host in sym_eig_jacobi_host, so the CPU tests check this schedule's arithmetic
// against float64 eigh (tests/test_directpred.py); only the thread mapping differs on the device (and, in the
// multi-block variant, the order in which ||A||_F^2 is summed for the absolute floor).
#include <cooperative_groups.h>

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "kernels.h"
#include "reduce.cuh"

namespace fusedssl {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 1024;
constexpr int kGridThreads = 256;  // per block of the multi-block variant: 132 SMs x 256 >= the 32896 blocks of n = 512
constexpr int kMaxPairs = kMaxEighN / 2;
constexpr int kReplayWarps = 8;                  // rows of V per replay block
constexpr int kPairsPerLane = kMaxPairs / 32;    // rotations a lane applies per round

// Position of (i, j) in the packed upper triangle of an n x n symmetric matrix.
__host__ __device__ inline int tri(int i, int j, int n) {
  if (i > j) {
    const int t = i;
    i = j;
    j = t;
  }
  return i * (2 * n - i - 1) / 2 + j;
}

// Pair k of round r in the round-robin ordering of n (even) indices: n - 1 stays put, the others rotate; over n - 1
// rounds every pair meets exactly once.
// With 0 <= r < n - 1 and 0 < k < n / 2 both sums lie in [0, 2 (n - 1)), so one conditional subtraction replaces the
// modulo (a division subroutine on the device).
__host__ __device__ inline int2 pair_of(int r, int k, int n) {
  const int n1 = n - 1;
  if (k == 0) return make_int2(r, n1);
  const int p = r + k, q = r + n1 - k;
  return make_int2(p >= n1 ? p - n1 : p, q >= n1 ? q - n1 : q);
}

// Pair blocks (ka, kb), ka <= kb, of m pairs, numbered row by row over the upper triangle: row ka starts at
// ka (2m - ka + 1) / 2. Phase 2 walks these m (m + 1) / 2 numbers, so no thread draws a lower-triangle index and
// idles. The float square root is exact to within one row for m <= 256; the two loops correct that.
__host__ __device__ inline int2 tri_pair(int idx, int m) {
  const float b = 2.f * m + 1.f;
  int ka = static_cast<int>(0.5f * (b - sqrtf(b * b - 8.f * idx)));
  while (ka > 0 && ka * (2 * m - ka + 1) / 2 > idx) --ka;
  while ((ka + 1) * (2 * m - ka) / 2 <= idx) ++ka;
  return make_int2(ka, ka + idx - ka * (2 * m - ka + 1) / 2);
}

// The rotation (c, s) with J = [[c, s], [-s, c]] on (p, q) such that (J' A J)_pq = 0 (Golub & Van Loan, sym.schur2);
// the identity (1, 0) when |a_pq| is below tol relative to sqrt(|a_pp a_qq|) or below the absolute floor.
__host__ __device__ inline float2 rotation(float app, float aqq, float apq, float tol, float floor_abs) {
  const float mag = fabsf(apq);
  if (mag <= floor_abs || mag <= tol * sqrtf(fabsf(app)) * sqrtf(fabsf(aqq))) return make_float2(1.f, 0.f);
  const float tau = (aqq - app) / (2.f * apq);
  // |tau| > 1e18: tau^2 would overflow; t = 1 / (2 tau) is then exact to fp32.
  const float t = fabsf(tau) > 1e18f ? 0.5f / tau : copysignf(1.f, tau) / (fabsf(tau) + sqrtf(1.f + tau * tau));
  const float c = 1.f / sqrtf(1.f + t * t);
  return make_float2(c, t * c);
}

// Phase 2 for one pair block: dst <- J_a' src J_b on its stored elements (pairs a and b are disjoint, or the same
// pair). Every read comes before the first write, so dst may be src (the one-block kernel and the host rotate in place;
// the grid kernel reads one buffer and writes the other). An identity block is copied where dst is not src.
__host__ __device__ inline void rotate_block(const float* src, float* dst, int n, int pa, int qa, float2 ra, int pb,
                                             int qb, float2 rb) {
  if (pa == pb) {  // diagonal block: the closed form, a'_pq = 0 exactly
    const int ip = tri(pa, pa, n), iq = tri(qa, qa, n), ipq = tri(pa, qa, n);
    const float app = src[ip], aqq = src[iq], apq = src[ipq];
    if (ra.y == 0.f) {
      dst[ip] = app;
      dst[iq] = aqq;
      dst[ipq] = apq;
      return;
    }
    const float t = ra.y / ra.x;
    dst[ip] = app - t * apq;
    dst[iq] = aqq + t * apq;
    dst[ipq] = 0.f;
    return;
  }
  const int i00 = tri(pa, pb, n), i01 = tri(pa, qb, n), i10 = tri(qa, pb, n), i11 = tri(qa, qb, n);
  const float x = src[i00], y = src[i01], z = src[i10], w = src[i11];
  const float x1 = ra.x * x - ra.y * z, y1 = ra.x * y - ra.y * w;  // rows:    J_a' A
  const float z1 = ra.y * x + ra.x * z, w1 = ra.y * y + ra.x * w;
  dst[i00] = rb.x * x1 - rb.y * y1;                                  // columns: (J_a' A) J_b
  dst[i01] = rb.y * x1 + rb.x * y1;
  dst[i10] = rb.x * z1 - rb.y * w1;
  dst[i11] = rb.y * z1 + rb.x * w1;
}

// Columns p, q of one row of V: V <- V J.
__host__ __device__ inline void rotate_pair(float* row, int p, int q, float2 g) {
  const float x = row[p], y = row[q];
  row[p] = g.x * x - g.y * y;
  row[q] = g.y * x + g.x * y;
}

__host__ __device__ inline float spectral(float s, float smax, float eps, float inv_c) {
  const float x = fmaxf(s, 0.f) / fmaxf(smax, FLT_MIN);  // an all-zero F^ gives p = eps everywhere
  const float r = inv_c == 0.5f ? sqrtf(x) : (inv_c == 1.f ? x : powf(x, inv_c));
  return fmaxf(r + eps, 1e-4f);
}

// The end of a solve, by one block of kBlock threads: the eigenvalues (A's diagonal), the spectral map, and info.
template <int kBlock>
__device__ void finish(const float* a, int n, float* s_out, float* p_out, int* info, int swept, int converged,
                       float eps, float inv_c, float* red, float* bcast) {
  const int tid = threadIdx.x;
  float mx = -FLT_MAX;
  for (int i = tid; i < n; i += kBlock) {
    const float s = a[tri(i, i, n)];
    s_out[i] = s;
    mx = fmaxf(mx, s);
  }
  mx = block_reduce<kBlock>(mx, red, MaxOp{}, -FLT_MAX);
  if (tid == 0) *bcast = mx;
  __syncthreads();
  for (int i = tid; i < n; i += kBlock) p_out[i] = spectral(a[tri(i, i, n)], *bcast, eps, inv_c);
  if (tid == 0) {
    info[0] = swept;
    info[1] = converged;
  }
}

// (kThreads, 1): one block is ever launched, so ptxas may use the whole register file (at the default of two
// blocks per SM it capped the kernel at 32 registers and spilled inside the sweep loops)
// kSmem: A in shared memory (templated so that its accesses compile to shared loads and stores, not generic ones).
template <bool kSmem>
__global__ void __launch_bounds__(kThreads, 1)
    jacobi_kernel(const float* __restrict__ in, float* scratch_a, float2* __restrict__ rots, float* __restrict__ s_out,
                  float* __restrict__ p_out, int* __restrict__ info, int n, int max_sweeps, float tol, float eps,
                  float inv_c) {
  extern __shared__ float smem_a[];
  __shared__ float2 rot[kMaxPairs];
  __shared__ int pidx[kMaxPairs], qidx[kMaxPairs];
  __shared__ float red[kThreads / 32];
  __shared__ float bcast;
  float* a = kSmem ? smem_a : scratch_a;  // no __restrict__/__ldg: A is rewritten every round
  const int m = n / 2, tid = threadIdx.x;

  float sq = 0.f;
  for (int idx = tid; idx < n * n; idx += kThreads) {
    const int i = idx / n, j = idx - i * n;
    if (i > j) continue;
    const float v = 0.5f * (in[idx] + in[j * n + i]);
    a[tri(i, j, n)] = v;
    sq += (i == j ? 1.f : 2.f) * v * v;
  }
  sq = block_sum<kThreads>(sq, red);
  if (tid == 0) bcast = sq;
  __syncthreads();
  const float floor_abs = tol * sqrtf(bcast) / n;  // ||A||_F is invariant under the rotations

  int swept = 0, converged = 0;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    int any = 0;
    for (int r = 0; r < n - 1; ++r) {
      int mine = 0;
      if (tid < m) {
        const int2 pq = pair_of(r, tid, n);
        const float2 g = rotation(a[tri(pq.x, pq.x, n)], a[tri(pq.y, pq.y, n)], a[tri(pq.x, pq.y, n)], tol, floor_abs);
        rot[tid] = g;
        pidx[tid] = pq.x;
        qidx[tid] = pq.y;
        rots[(static_cast<int64_t>(sweep) * (n - 1) + r) * m + tid] = g;
        mine = g.y != 0.f;
      }
      any |= __syncthreads_or(mine);
      for (int idx = tid; idx < m * (m + 1) / 2; idx += kThreads) {
        const int2 k = tri_pair(idx, m);
        const float2 ra = rot[k.x], rb = rot[k.y];
        if (ra.y == 0.f && rb.y == 0.f) continue;
        rotate_block(a, a, n, pidx[k.x], qidx[k.x], ra, pidx[k.y], qidx[k.y], rb);
      }
      __syncthreads();
    }
    if (!any) {  // a sweep without a rotation: A is diagonal to tol (this sweep's record is all identities)
      converged = 1;
      break;
    }
    swept = sweep + 1;
  }

  finish<kThreads>(a, n, s_out, p_out, info, swept, converged, eps, inv_c, red, &bcast);
}

// The multi-block variant of jacobi_kernel: the same rounds and rotations, with phase 2 spread over every SM. Launched
// cooperatively (all blocks resident), one grid-wide barrier per round. Every block computes all of a round's rotations
// itself from the same matrix (at most 256, three reads each), so the rotations, the convergence test and the
// barrier count agree across blocks without any exchange. The packed matrix lives in global memory (L2) twice: a round
// reads one copy and writes the next into the other, identity blocks copied, so no block can overwrite an entry that
// another block still reads for the same round's rotations; one barrier then separates the rounds.
// Where it may win: n > 336, when A no longer fits one SM's shared memory and the one-block kernel's phase 2 runs on
// one SM's share of L2 bandwidth; where a barrier costs more than a round's work, it loses. bench_directpred decides.
__global__ void __launch_bounds__(kGridThreads)
    jacobi_grid_kernel(const float* __restrict__ in, float* bufs, float* partial, float2* __restrict__ rots,
                       float* __restrict__ s_out, float* __restrict__ p_out, int* __restrict__ info, int n,
                       int max_sweeps, float tol, float eps, float inv_c) {
  cg::grid_group grid = cg::this_grid();
  __shared__ float2 rot[kMaxPairs];
  __shared__ float red[kGridThreads / 32];
  __shared__ float bcast;
  const int m = n / 2, tid = threadIdx.x;
  const int64_t packed = static_cast<int64_t>(n) * (n + 1) / 2;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kGridThreads + tid;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kGridThreads;

  float sq = 0.f;
  for (int64_t idx = first; idx < static_cast<int64_t>(n) * n; idx += stride) {
    const int i = static_cast<int>(idx / n), j = static_cast<int>(idx - static_cast<int64_t>(i) * n);
    if (i > j) continue;
    const float v = 0.5f * (in[idx] + in[static_cast<int64_t>(j) * n + i]);
    bufs[tri(i, j, n)] = v;
    sq += (i == j ? 1.f : 2.f) * v * v;
  }
  sq = block_sum<kGridThreads>(sq, red);
  if (tid == 0) partial[blockIdx.x] = sq;
  grid.sync();
  // every block sums the partials in the same order: one floor everywhere, the same from run to run
  float total = 0.f;
  for (int b = tid; b < static_cast<int>(gridDim.x); b += kGridThreads) total += partial[b];
  total = block_sum<kGridThreads>(total, red);
  if (tid == 0) bcast = total;
  __syncthreads();
  const float floor_abs = tol * sqrtf(bcast) / n;

  float* cur = bufs;
  float* nxt = bufs + packed;
  int swept = 0, converged = 0;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    int any = 0;
    for (int r = 0; r < n - 1; ++r) {
      int mine = 0;
      for (int k = tid; k < m; k += kGridThreads) {
        const int2 pq = pair_of(r, k, n);
        const float2 g = rotation(cur[tri(pq.x, pq.x, n)], cur[tri(pq.y, pq.y, n)], cur[tri(pq.x, pq.y, n)], tol,
                                  floor_abs);
        rot[k] = g;
        if (blockIdx.x == 0) rots[(static_cast<int64_t>(sweep) * (n - 1) + r) * m + k] = g;
        mine |= g.y != 0.f;
      }
      any |= __syncthreads_or(mine);
      for (int64_t idx = first; idx < m * (m + 1) / 2; idx += stride) {
        const int2 k = tri_pair(static_cast<int>(idx), m);
        const int2 a = pair_of(r, k.x, n), b = pair_of(r, k.y, n);
        rotate_block(cur, nxt, n, a.x, a.y, rot[k.x], b.x, b.y, rot[k.y]);
      }
      grid.sync();
      float* const t = cur;
      cur = nxt;
      nxt = t;
    }
    if (!any) {
      converged = 1;
      break;
    }
    swept = sweep + 1;
  }

  if (blockIdx.x == 0) finish<kGridThreads>(cur, n, s_out, p_out, info, swept, converged, eps, inv_c, red, &bcast);
}

// One warp per row of V (kept in shared memory); lane l applies pairs l, l + 32, ... of every recorded round, with the
// next round's rotations loaded while the current one is applied. Only __syncwarp between rounds: rows are independent.
__global__ void __launch_bounds__(kReplayWarps * 32)
    replay_kernel(const float2* __restrict__ rots, const int* __restrict__ info, float* __restrict__ v, int n) {
  __shared__ float rows[kReplayWarps][kMaxEighN];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, m = n / 2;
  const int row = blockIdx.x * kReplayWarps + warp;
  if (row >= n) return;  // whole warps only: the barriers below are per warp
  float* x = rows[warp];
  for (int j = lane; j < n; j += 32) x[j] = v[static_cast<int64_t>(row) * n + j];
  __syncwarp();
  const int64_t total = static_cast<int64_t>(info[0]) * (n - 1);
  float2 cur[kPairsPerLane], nxt[kPairsPerLane];
#pragma unroll
  for (int u = 0; u < kPairsPerLane; ++u) {
    const int k = lane + 32 * u;
    cur[u] = (k < m && total > 0) ? rots[k] : make_float2(1.f, 0.f);
  }
  int r = 0;
  for (int64_t step = 0; step < total; ++step) {
#pragma unroll
    for (int u = 0; u < kPairsPerLane; ++u) {
      const int k = lane + 32 * u;
      nxt[u] = (k < m && step + 1 < total) ? rots[(step + 1) * m + k] : make_float2(1.f, 0.f);
    }
#pragma unroll
    for (int u = 0; u < kPairsPerLane; ++u) {
      const int k = lane + 32 * u;
      if (k < m && cur[u].y != 0.f) {
        const int2 pq = pair_of(r, k, n);
        rotate_pair(x, pq.x, pq.y, cur[u]);
      }
    }
    __syncwarp();
#pragma unroll
    for (int u = 0; u < kPairsPerLane; ++u) cur[u] = nxt[u];
    if (++r == n - 1) r = 0;  // step % (n - 1), without a 64-bit division per step
  }
  for (int j = lane; j < n; j += 32) v[static_cast<int64_t>(row) * n + j] = x[j];
}

}  // namespace

int64_t jacobi_scratch_floats(int64_t n, int blocks) {
  const int64_t packed = n * (n + 1) / 2;
  return blocks <= 1 ? packed : 2 * packed + blocks;
}

int64_t jacobi_record_size(int64_t n, int max_sweeps) { return static_cast<int64_t>(max_sweeps) * (n - 1) * (n / 2); }

int jacobi_grid_blocks(int64_t n, int requested) {
  int dev = 0, coop = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, jacobi_grid_kernel, kGridThreads, 0) != cudaSuccess)
    return 0;
  // no more blocks than give each thread one pair block (phase 2 walks m (m + 1) / 2 of them), nor than can be
  // resident at once (a cooperative launch fails otherwise)
  const int64_t m = n / 2, useful = (m * (m + 1) / 2 + kGridThreads - 1) / kGridThreads;
  int64_t blocks = static_cast<int64_t>(sms) * per_sm;
  if (requested > 1) blocks = std::min<int64_t>(blocks, requested);
  return static_cast<int>(std::max<int64_t>(2, std::min<int64_t>(blocks, useful)));
}

cudaError_t sym_eig_jacobi(const float* a, float* v, float* s, float* p, int* info, float* scratch, float2* rots,
                           int64_t n, int max_sweeps, float tol, float eps, float convert, int blocks,
                           cudaStream_t stream) {
  if (n < 2 || n > kMaxEighN || n % 2) return cudaErrorInvalidValue;
  cudaError_t err;
  if (blocks > 1) {
    // blocks was capped by jacobi_grid_blocks (the caller sized scratch with it); co-residency is the launch's own check
    int ni = static_cast<int>(n), sweeps = max_sweeps;
    float inv_c = 1.f / convert;
    float* bufs = scratch;
    float* partial = scratch + 2 * (n * (n + 1) / 2);
    void* args[] = {const_cast<float**>(&a), &bufs, &partial, &rots, &s, &p, &info, &ni, &sweeps, &tol, &eps, &inv_c};
    err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(jacobi_grid_kernel), dim3(blocks),
                                      dim3(kGridThreads), args, 0, stream);
    if (err != cudaSuccess) return err;
  } else {
    int dev = 0, optin = 0;
    err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (err != cudaSuccess) return err;
    // the kernel's static shared memory (rot, pidx, qidx, red, bcast) comes on top of the packed matrix: read it from
    // the compiled kernel rather than estimating it
    cudaFuncAttributes attr;
    err = cudaFuncGetAttributes(&attr, jacobi_kernel<true>);
    if (err != cudaSuccess) return err;
    const size_t bytes = static_cast<size_t>(jacobi_scratch_floats(n, 1)) * sizeof(float);
    const bool use_smem = bytes + attr.sharedSizeBytes <= static_cast<size_t>(optin);
    // The default dynamic limit is 48 KiB minus the static shared memory, so the opt-in is set for every launch that
    // uses shared memory (setting it once for a large n and not for a slightly smaller one made n = 150..156 fail)
    if (use_smem) {
      err = cudaFuncSetAttribute(jacobi_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(bytes));
      if (err != cudaSuccess) return err;
      jacobi_kernel<true><<<1, kThreads, bytes, stream>>>(a, scratch, rots, s, p, info, static_cast<int>(n),
                                                          max_sweeps, tol, eps, 1.f / convert);
    } else {
      jacobi_kernel<false><<<1, kThreads, 0, stream>>>(a, scratch, rots, s, p, info, static_cast<int>(n), max_sweeps,
                                                       tol, eps, 1.f / convert);
    }
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  const int rows = static_cast<int>((n + kReplayWarps - 1) / kReplayWarps);
  replay_kernel<<<rows, kReplayWarps * 32, 0, stream>>>(rots, info, v, static_cast<int>(n));
  return cudaGetLastError();
}

void sym_eig_jacobi_host(const float* a_in, float* v, float* s, float* p, int* info, float* a, float2* rots,
                         int64_t n64, int max_sweeps, float tol, float eps, float convert, bool double_buffer) {
  const int n = static_cast<int>(n64), m = n / 2;
  float* other = a + n64 * (n64 + 1) / 2;  // the second copy (double_buffer only)
  float sq = 0.f;
  for (int i = 0; i < n; ++i)
    for (int j = i; j < n; ++j) {
      const float x = 0.5f * (a_in[i * n + j] + a_in[j * n + i]);
      a[tri(i, j, n)] = x;
      sq += (i == j ? 1.f : 2.f) * x * x;
    }
  const float floor_abs = tol * sqrtf(sq) / n;
  float2 rot[kMaxPairs];
  int pidx[kMaxPairs], qidx[kMaxPairs];
  int swept = 0, converged = 0;
  for (int sweep = 0; sweep < max_sweeps; ++sweep) {
    int any = 0;
    for (int r = 0; r < n - 1; ++r) {
      for (int k = 0; k < m; ++k) {  // phase 1
        const int2 pq = pair_of(r, k, n);
        const int pp = pidx[k] = pq.x, qq = qidx[k] = pq.y;
        rot[k] = rotation(a[tri(pp, pp, n)], a[tri(qq, qq, n)], a[tri(pp, qq, n)], tol, floor_abs);
        rots[(static_cast<int64_t>(sweep) * (n - 1) + r) * m + k] = rot[k];
        any |= rot[k].y != 0.f;
      }
      for (int idx = 0; idx < m * (m + 1) / 2; ++idx) {  // phase 2, through the kernels' triangular numbering
        const int2 k = tri_pair(idx, m);
        if (double_buffer)  // the multi-block kernel's data flow: every block rotated or copied into the other copy
          rotate_block(a, other, n, pidx[k.x], qidx[k.x], rot[k.x], pidx[k.y], qidx[k.y], rot[k.y]);
        else if (rot[k.x].y != 0.f || rot[k.y].y != 0.f)
          rotate_block(a, a, n, pidx[k.x], qidx[k.x], rot[k.x], pidx[k.y], qidx[k.y], rot[k.y]);
      }
      if (double_buffer) std::swap(a, other);
    }
    if (!any) {
      converged = 1;
      break;
    }
    swept = sweep + 1;
  }
  float mx = -FLT_MAX;
  for (int i = 0; i < n; ++i) {
    s[i] = a[tri(i, i, n)];
    mx = fmaxf(mx, s[i]);
  }
  for (int i = 0; i < n; ++i) p[i] = spectral(s[i], mx, eps, 1.f / convert);
  info[0] = swept;
  info[1] = converged;
  for (int64_t step = 0, r = 0; step < static_cast<int64_t>(swept) * (n - 1); ++step, r = r + 1 == n - 1 ? 0 : r + 1)
    for (int k = 0; k < m; ++k) {  // the replay, row by row
      const float2 g = rots[step * m + k];
      if (g.y == 0.f) continue;
      const int2 pq = pair_of(static_cast<int>(r), k, n);
      for (int i = 0; i < n; ++i) rotate_pair(v + static_cast<int64_t>(i) * n, pq.x, pq.y, g);
    }
}

}  // namespace fusedssl
