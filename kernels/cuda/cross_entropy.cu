#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/reduce.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 512;

// One block per row (grid-strided). Pass 1: each thread keeps an online
// (max, sum of exp) over its elements; the block combines them. Pass 2:
// overwrite the row with its gradient.
__global__ void CrossEntropyKernel(uint16_t* __restrict__ logits,
                                   const int32_t* __restrict__ targets,
                                   const uint8_t* __restrict__ mask, float scale,
                                   float* __restrict__ loss, int64_t n, int64_t v) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    uint16_t* row = logits + r * v;
    if (mask != nullptr && mask[r] == 0) {
      for (int64_t i = threadIdx.x; i < v; i += blockDim.x) row[i] = 0;
      if (threadIdx.x == 0) loss[r] = 0.0f;
      continue;
    }
    float thread_max = -__int_as_float(0x7f800000);
    float thread_sum = 0.0f;
    for (int64_t i = threadIdx.x; i < v; i += blockDim.x) {
      const float x = BF16ToF32(row[i]);
      if (x > thread_max) {
        thread_sum = thread_sum * expf(thread_max - x) + 1.0f;
        thread_max = x;
      } else {
        thread_sum += expf(x - thread_max);
      }
    }
    const float row_max = BlockMax(thread_max, scratch);
    // Threads that saw no element (v < blockDim) have thread_max = -inf and
    // a zero sum; keep them out of exp(-inf - -inf).
    const float rescaled = thread_sum > 0.0f ? thread_sum * expf(thread_max - row_max) : 0.0f;
    const float sum = BlockSum(rescaled, scratch);
    const float log_sum_exp = row_max + logf(sum);
    const int64_t target = targets[r];
    // Every thread reads the target logit before any thread overwrites the
    // row (BlockSum synchronized above and nothing is written yet).
    const float target_logit = BF16ToF32(row[target]);
    __syncthreads();
    if (threadIdx.x == 0) loss[r] = log_sum_exp - target_logit;
    for (int64_t i = threadIdx.x; i < v; i += blockDim.x) {
      const float p = expf(BF16ToF32(row[i]) - log_sum_exp);
      row[i] = F32ToBF16(scale * (p - (i == target ? 1.0f : 0.0f)));
    }
    __syncthreads();  // The next row's reductions reuse scratch.
  }
}

}  // namespace

cudaError_t CrossEntropyForwardBackward(uint16_t* logits, const int32_t* targets,
                                        const uint8_t* mask, float scale, float* loss, int64_t n,
                                        int64_t v, cudaStream_t stream) {
  if (n < 0 || v <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int blocks = static_cast<int>(n < 65535 ? n : 65535);
  CrossEntropyKernel<<<blocks, kThreads, 0, stream>>>(logits, targets, mask, scale, loss, n, v);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
