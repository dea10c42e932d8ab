#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/embedding.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;

// One block per output row (grid-strided), threads across the row.
__global__ void EmbeddingForwardKernel(const uint16_t* __restrict__ table,
                                       const int32_t* __restrict__ tokens,
                                       uint16_t* __restrict__ out, int64_t n, int64_t c) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const uint16_t* src = table + static_cast<int64_t>(tokens[r]) * c;
    uint16_t* dst = out + r * c;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) dst[i] = src[i];
  }
}

// Thread i owns column i of every table row, so no two threads ever add to
// the same element and each element's additions happen in row order.
__global__ void EmbeddingBackwardKernel(const uint16_t* __restrict__ dx,
                                        const int32_t* __restrict__ tokens,
                                        float* __restrict__ dtable, int64_t n, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= c) return;
  for (int64_t r = 0; r < n; ++r) {
    dtable[static_cast<int64_t>(tokens[r]) * c + i] += BF16ToF32(dx[r * c + i]);
  }
}

}  // namespace

cudaError_t EmbeddingForward(const uint16_t* table, const int32_t* tokens, uint16_t* out, int64_t n,
                             int64_t c, cudaStream_t stream) {
  if (n < 0 || c < 0) return cudaErrorInvalidValue;
  if (n == 0 || c == 0) return cudaSuccess;
  const int blocks = static_cast<int>(n < 65535 ? n : 65535);
  EmbeddingForwardKernel<<<blocks, kThreads, 0, stream>>>(table, tokens, out, n, c);
  return cudaGetLastError();
}

cudaError_t EmbeddingBackward(const uint16_t* dx, const int32_t* tokens, float* dtable, int64_t n,
                              int64_t c, cudaStream_t stream) {
  if (n < 0 || c < 0) return cudaErrorInvalidValue;
  if (n == 0 || c == 0) return cudaSuccess;
  const int64_t blocks = (c + kThreads - 1) / kThreads;
  EmbeddingBackwardKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(dx, tokens,
                                                                                  dtable, n, c);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
