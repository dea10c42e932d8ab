#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cast.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void BF16ToF32Kernel(const uint16_t* __restrict__ src, float* __restrict__ dst,
                                int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = BF16ToF32(src[i]);
  }
}

__global__ void F32ToBF16Kernel(const float* __restrict__ src, uint16_t* __restrict__ dst,
                                int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    dst[i] = F32ToBF16(src[i]);
  }
}

int Blocks(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

}  // namespace

cudaError_t CastBF16ToF32(const uint16_t* src, float* dst, int64_t n, cudaStream_t stream) {
  BF16ToF32Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, dst, n);
  return cudaGetLastError();
}

cudaError_t CastF32ToBF16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream) {
  F32ToBF16Kernel<<<Blocks(n), kThreads, 0, stream>>>(src, dst, n);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
