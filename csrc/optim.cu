// Multi-tensor LARS and EMA: every parameter of a network in three (LARS) or one (EMA) kernel launches, no host sync.
// The tensors are described by a device-resident table (kernels.h TensorTable): pointers, sizes, and a list of chunks
// of kChunk elements; one block handles one chunk, so a ResNet-50's 161 tensors (25.6 M values) are ~1,600 blocks,
// not 161 x several launches. LARS needs the norms |p| and |g + wd p| of every tensor before it can update any
// element: pass 1 writes each chunk's two partial sums, pass 2 (one block per tensor) adds its chunks' partials in a
// fixed order and turns them into the trust ratio, pass 3 updates. No atomics: the trust ratios are bitwise
// reproducible, which DDP needs (every rank runs the optimiser on the same all-reduced gradients and parameters are
// never re-broadcast, so one ulp of difference between ranks would grow into diverging replicas).
// The tensors only need to be non-overlapping and dense with equal strides per index (channels-last conv weights
// qualify): every pass walks storage order, which is the same element for the parameter, its gradient and its buffer.
#include "kernels.h"
#include "reduce.cuh"

namespace fusedssl {
namespace {

constexpr int kThreads = 512;
constexpr int kReduceThreads = 256;

__global__ void __launch_bounds__(kThreads) lars_partials_kernel(TensorTable t, float* partial, float weight_decay) {
  __shared__ float scratch[kThreads / 32];
  const int tensor = t.chunk_tensor[blockIdx.x];
  if (!t.adapt[tensor]) return;  // block-uniform: no barrier is skipped by part of the block
  const int64_t start = t.chunk_start[blockIdx.x];
  const int64_t end = min(start + kChunk, t.numel[tensor]);
  const float* p = t.param[tensor];
  const float* g = t.grad[tensor];
  float pp = 0.f, gg = 0.f;
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const float pi = p[i], gi = g[i] + weight_decay * pi;
    pp += pi * pi;
    gg += gi * gi;
  }
  pp = block_sum<kThreads>(pp, scratch);
  gg = block_sum<kThreads>(gg, scratch);
  if (threadIdx.x == 0) {
    partial[2 * blockIdx.x] = pp;
    partial[2 * blockIdx.x + 1] = gg;
  }
}

__global__ void __launch_bounds__(kReduceThreads) lars_trust_kernel(TensorTable t, const float* partial, float* trust,
                                                                     float eta) {
  __shared__ float scratch[kReduceThreads / 32];
  const int tensor = blockIdx.x;
  if (!t.adapt[tensor]) {
    if (threadIdx.x == 0) trust[tensor] = 1.f;
    return;
  }
  float pp = 0.f, gg = 0.f;
  for (int64_t c = t.first_chunk[tensor] + threadIdx.x; c < t.first_chunk[tensor + 1]; c += kReduceThreads) {
    pp += partial[2 * c];
    gg += partial[2 * c + 1];
  }
  pp = block_sum<kReduceThreads>(pp, scratch);
  gg = block_sum<kReduceThreads>(gg, scratch);
  if (threadIdx.x == 0) {
    const float wn = sqrtf(pp), gn = sqrtf(gg);
    trust[tensor] = (wn > 0.f && gn > 0.f) ? eta * wn / gn : 1.f;
  }
}

__global__ void __launch_bounds__(kThreads) lars_update_kernel(TensorTable t, const float* trust, float lr,
                                                                const float* lr_ptr, float momentum,
                                                                float weight_decay) {
  const int tensor = t.chunk_tensor[blockIdx.x];
  const int64_t start = t.chunk_start[blockIdx.x];
  const int64_t end = min(start + kChunk, t.numel[tensor]);
  const float tr = trust[tensor], wd = t.adapt[tensor] ? weight_decay : 0.f;
  const float step = lr_ptr ? *lr_ptr : lr;
  float* p = t.param[tensor];
  const float* g = t.grad[tensor];
  float* b = t.buf[tensor];
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const float bi = momentum * b[i] + tr * (g[i] + wd * p[i]);
    b[i] = bi;
    p[i] -= step * bi;
  }
}

__global__ void __launch_bounds__(kThreads) ema_kernel(TensorTable t, float w) {
  const int tensor = t.chunk_tensor[blockIdx.x];
  const int64_t start = t.chunk_start[blockIdx.x];
  const int64_t end = min(start + kChunk, t.numel[tensor]);
  float* teacher = t.param[tensor];
  const float* online = t.grad[tensor];
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) teacher[i] += w * (online[i] - teacher[i]);
}

}  // namespace

int64_t lars_scratch_floats(const TensorTable& t) { return 2 * t.chunks + t.tensors; }

cudaError_t lars_step(const TensorTable& t, float* scratch, float lr, const float* lr_ptr, float momentum,
                      float weight_decay, float eta, cudaStream_t stream) {
  if (t.chunks == 0) return cudaSuccess;
  float* partial = scratch;
  float* trust = scratch + 2 * t.chunks;
  lars_partials_kernel<<<static_cast<unsigned>(t.chunks), kThreads, 0, stream>>>(t, partial, weight_decay);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  lars_trust_kernel<<<static_cast<unsigned>(t.tensors), kReduceThreads, 0, stream>>>(t, partial, trust, eta);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  lars_update_kernel<<<static_cast<unsigned>(t.chunks), kThreads, 0, stream>>>(t, trust, lr, lr_ptr, momentum,
                                                                               weight_decay);
  return cudaGetLastError();
}

cudaError_t ema_update(const TensorTable& t, float weight, cudaStream_t stream) {
  if (t.chunks == 0) return cudaSuccess;
  ema_kernel<<<static_cast<unsigned>(t.chunks), kThreads, 0, stream>>>(t, weight);
  return cudaGetLastError();
}

}  // namespace fusedssl
