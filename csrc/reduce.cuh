// Block-wide reductions shared by the .cu files: warp shuffles, then one warp over the per-warp partials. Torch-free.
#pragma once

namespace fusedssl {

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// op-reduction of v over the kThreads threads of the block (a multiple of 32, at most 1024); the result is valid in
// thread 0. ``scratch`` holds kThreads / 32 floats of shared memory; ``identity`` is op's neutral value. Ends with a
// barrier, so it can be called again at once.
template <int kThreads, class Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op, float identity) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? scratch[threadIdx.x] : identity;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  __syncthreads();
  return v;
}

template <int kThreads>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  return block_reduce<kThreads>(v, scratch, SumOp{}, 0.f);
}

}  // namespace fusedssl
