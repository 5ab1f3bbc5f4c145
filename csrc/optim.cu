// Multi-tensor LARS and EMA: every parameter of a network in three (LARS) or one (EMA) kernel launches, no host sync.
// The tensors are described by a device-resident table (kernels.h TensorTable): pointers, sizes, and a list of chunks
// of kChunk elements; one block handles one chunk, so a ResNet-50's 161 tensors (25.6 M values) are ~1,600 blocks,
// not 161 x several launches. LARS needs the norms |p| and |g + wd p| of every tensor before it can update any
// element: pass 1 accumulates them per tensor (block reduction, one atomicAdd per block and tensor), pass 2 updates.
#include "kernels.h"
#include "reduce.cuh"

namespace fusedssl {
namespace {

constexpr int kThreads = 512;

__global__ void __launch_bounds__(kThreads) lars_norms_kernel(TensorTable t, float* norms, float weight_decay) {
  __shared__ float scratch[kThreads / 32];
  const int tensor = t.chunk_tensor[blockIdx.x];
  if (!t.adapt[tensor]) return;
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
    atomicAdd(norms + 2 * tensor, pp);
    atomicAdd(norms + 2 * tensor + 1, gg);
  }
}

__global__ void __launch_bounds__(kThreads) lars_update_kernel(TensorTable t, const float* norms, float lr,
                                                                const float* lr_ptr, float momentum,
                                                                float weight_decay, float eta) {
  const int tensor = t.chunk_tensor[blockIdx.x];
  const int64_t start = t.chunk_start[blockIdx.x];
  const int64_t end = min(start + kChunk, t.numel[tensor]);
  const bool adapt = t.adapt[tensor];
  float trust = 1.f, wd = 0.f;
  if (adapt) {
    const float wn = sqrtf(norms[2 * tensor]), gn = sqrtf(norms[2 * tensor + 1]);
    trust = (wn > 0.f && gn > 0.f) ? eta * wn / gn : 1.f;
    wd = weight_decay;
  }
  const float step = lr_ptr ? *lr_ptr : lr;
  float* p = t.param[tensor];
  const float* g = t.grad[tensor];
  float* b = t.buf[tensor];
  for (int64_t i = start + threadIdx.x; i < end; i += kThreads) {
    const float bi = momentum * b[i] + trust * (g[i] + wd * p[i]);
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

cudaError_t lars_step(const TensorTable& t, float* norms, float lr, const float* lr_ptr, float momentum,
                      float weight_decay, float eta, cudaStream_t stream) {
  if (t.chunks == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(norms, 0, sizeof(float) * 2 * t.tensors, stream);
  if (err != cudaSuccess) return err;
  lars_norms_kernel<<<static_cast<unsigned>(t.chunks), kThreads, 0, stream>>>(t, norms, weight_decay);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  lars_update_kernel<<<static_cast<unsigned>(t.chunks), kThreads, 0, stream>>>(t, norms, lr, lr_ptr, momentum,
                                                                               weight_decay, eta);
  return cudaGetLastError();
}

cudaError_t ema_update(const TensorTable& t, float tau, cudaStream_t stream) {
  if (t.chunks == 0) return cudaSuccess;
  ema_kernel<<<static_cast<unsigned>(t.chunks), kThreads, 0, stream>>>(t, 1.f - tau);
  return cudaGetLastError();
}

}  // namespace fusedssl
