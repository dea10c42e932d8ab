#include "kernels/cuda/add.cuh"
#include "kernels/cuda/bf16.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;

// No __restrict__: out may alias a or b (same element, same thread).
__global__ void AddKernel(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = F32ToBF16(BF16ToF32(a[i]) + BF16ToF32(b[i]));
  }
}

}  // namespace

cudaError_t Add(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n,
                cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  AddKernel<<<static_cast<int>(blocks < 65535 ? blocks : 65535), kThreads, 0, stream>>>(a, b, out,
                                                                                        n);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
