#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/silu_mul.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;

// No __restrict__: outputs may alias inputs (same element, same thread).
__global__ void SiluMulForwardKernel(const uint16_t* gate, const uint16_t* up, uint16_t* out,
                                     int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = BF16ToF32(gate[i]);
    const float u = BF16ToF32(up[i]);
    out[i] = F32ToBF16(g / (1.0f + expf(-g)) * u);
  }
}

__global__ void SiluMulBackwardKernel(const uint16_t* gate, const uint16_t* up,
                                      const uint16_t* dout, uint16_t* dgate, uint16_t* dup,
                                      int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = BF16ToF32(gate[i]);
    const float u = BF16ToF32(up[i]);
    const float d = BF16ToF32(dout[i]);
    const float sigmoid = 1.0f / (1.0f + expf(-g));
    if (dgate != nullptr) dgate[i] = F32ToBF16(d * u * sigmoid * (1.0f + g * (1.0f - sigmoid)));
    if (dup != nullptr) dup[i] = F32ToBF16(d * g * sigmoid);
  }
}

int Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);
}

}  // namespace

cudaError_t SiluMulForward(const uint16_t* gate, const uint16_t* up, uint16_t* out, int64_t n,
                           cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  SiluMulForwardKernel<<<Blocks(n), kThreads, 0, stream>>>(gate, up, out, n);
  return cudaGetLastError();
}

cudaError_t SiluMulBackward(const uint16_t* gate, const uint16_t* up, const uint16_t* dout,
                            uint16_t* dgate, uint16_t* dup, int64_t n, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0 || (dgate == nullptr && dup == nullptr)) return cudaSuccess;
  SiluMulBackwardKernel<<<Blocks(n), kThreads, 0, stream>>>(gate, up, dout, dgate, dup, n);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
