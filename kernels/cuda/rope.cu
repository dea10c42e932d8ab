#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/rope.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;

// One thread per rotated pair. `direction` is +1 (forward) or -1 (backward).
__global__ void RopeKernel(uint16_t* __restrict__ x, const float* __restrict__ cos_table,
                           const float* __restrict__ sin_table, int64_t pairs, int64_t seq_len,
                           int64_t heads, int64_t half, float direction) {
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < pairs;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = p % half;
    const int64_t row = p / half;  // (b * T + t) * heads + h
    const int64_t t = (row / heads) % seq_len;
    const float c = cos_table[t * half + i];
    const float s = direction * sin_table[t * half + i];
    uint16_t* v = x + row * 2 * half;
    const float lo = BF16ToF32(v[i]);
    const float hi = BF16ToF32(v[i + half]);
    v[i] = F32ToBF16(lo * c - hi * s);
    v[i + half] = F32ToBF16(hi * c + lo * s);
  }
}

cudaError_t LaunchRope(uint16_t* x, const float* cos_table, const float* sin_table, int64_t batch,
                       int64_t seq_len, int64_t heads, int64_t head_dim, float direction,
                       cudaStream_t stream) {
  if (batch < 0 || seq_len < 0 || heads < 0 || head_dim <= 0 || head_dim % 2 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t half = head_dim / 2;
  const int64_t pairs = batch * seq_len * heads * half;
  if (pairs == 0) return cudaSuccess;
  int64_t blocks = (pairs + kThreads - 1) / kThreads;
  if (blocks > 65535) blocks = 65535;
  RopeKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      x, cos_table, sin_table, pairs, seq_len, heads, half, direction);
  return cudaGetLastError();
}

}  // namespace

cudaError_t RopeForward(uint16_t* x, const float* cos_table, const float* sin_table, int64_t batch,
                        int64_t seq_len, int64_t heads, int64_t head_dim, cudaStream_t stream) {
  return LaunchRope(x, cos_table, sin_table, batch, seq_len, heads, head_dim, 1.0f, stream);
}

cudaError_t RopeBackward(uint16_t* dx, const float* cos_table, const float* sin_table,
                         int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim,
                         cudaStream_t stream) {
  return LaunchRope(dx, cos_table, sin_table, batch, seq_len, heads, head_dim, -1.0f, stream);
}

}  // namespace llamapro::cuda
