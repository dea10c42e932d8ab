#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/reduce.cuh"
#include "kernels/cuda/rmsnorm.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 65535;
// Rows summed per block into one partial of dw. Fixed, so the order of the
// fp32 additions does not depend on the GPU.
constexpr int64_t kRowsPerChunk = 64;

// One block per row (grid-strided). y may alias x: each element is read again
// by the thread that writes it.
__global__ void RmsNormForwardKernel(const uint16_t* x, const uint16_t* __restrict__ w, uint16_t* y,
                                     float* __restrict__ inv_rms, int64_t n, int64_t c, float eps) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const uint16_t* xr = x + r * c;
    float sum_sq = 0.0f;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      const float v = BF16ToF32(xr[i]);
      sum_sq += v * v;
    }
    sum_sq = BlockSum(sum_sq, scratch);
    const float s = 1.0f / sqrtf(sum_sq / static_cast<float>(c) + eps);
    if (threadIdx.x == 0) inv_rms[r] = s;
    uint16_t* yr = y + r * c;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      yr[i] = F32ToBF16(BF16ToF32(xr[i]) * s * BF16ToF32(w[i]));
    }
  }
}

__global__ void RmsNormBackwardDxKernel(const uint16_t* __restrict__ dy,
                                        const uint16_t* __restrict__ x,
                                        const uint16_t* __restrict__ w,
                                        const float* __restrict__ inv_rms,
                                        uint16_t* __restrict__ dx, int64_t n, int64_t c) {
  __shared__ float scratch[32];
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const uint16_t* dyr = dy + r * c;
    const uint16_t* xr = x + r * c;
    float dot = 0.0f;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      dot += BF16ToF32(dyr[i]) * BF16ToF32(w[i]) * BF16ToF32(xr[i]);
    }
    dot = BlockSum(dot, scratch);
    const float s = inv_rms[r];
    const float coef = s * s * s / static_cast<float>(c) * dot;
    uint16_t* dxr = dx + r * c;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      dxr[i] = F32ToBF16(BF16ToF32(dyr[i]) * BF16ToF32(w[i]) * s - BF16ToF32(xr[i]) * coef);
    }
  }
}

// partial[chunk, i] = sum over the chunk's rows of dy_ri x_ri s_r, in row
// order. Grid: (column blocks, row chunks).
__global__ void RmsNormBackwardDwPartialKernel(const uint16_t* __restrict__ dy,
                                               const uint16_t* __restrict__ x,
                                               const float* __restrict__ inv_rms,
                                               float* __restrict__ partial, int64_t n, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= c) return;
  const int64_t first = blockIdx.y * kRowsPerChunk;
  const int64_t last = first + kRowsPerChunk < n ? first + kRowsPerChunk : n;
  float acc = 0.0f;
  for (int64_t r = first; r < last; ++r) {
    acc += BF16ToF32(dy[r * c + i]) * BF16ToF32(x[r * c + i]) * inv_rms[r];
  }
  partial[blockIdx.y * c + i] = acc;
}

// dw[i] += sum over chunks of partial[chunk, i], in chunk order.
__global__ void RmsNormBackwardDwSumKernel(const float* __restrict__ partial,
                                           float* __restrict__ dw, int64_t chunks, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= c) return;
  float acc = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * c + i];
  dw[i] += acc;
}

int RowBlocks(int64_t n) { return static_cast<int>(n < kMaxBlocks ? n : kMaxBlocks); }

}  // namespace

cudaError_t RmsNormForward(const uint16_t* x, const uint16_t* w, uint16_t* y, float* inv_rms,
                           int64_t n, int64_t c, float eps, cudaStream_t stream) {
  if (n < 0 || c <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  RmsNormForwardKernel<<<RowBlocks(n), kThreads, 0, stream>>>(x, w, y, inv_rms, n, c, eps);
  return cudaGetLastError();
}

int64_t RmsNormBackwardScratchSize(int64_t n, int64_t c) {
  return (n + kRowsPerChunk - 1) / kRowsPerChunk * c;
}

cudaError_t RmsNormBackward(const uint16_t* dy, const uint16_t* x, const uint16_t* w,
                            const float* inv_rms, uint16_t* dx, float* dw, int64_t n, int64_t c,
                            float* scratch, cudaStream_t stream) {
  if (n < 0 || c <= 0) return cudaErrorInvalidValue;
  if (dw != nullptr && scratch == nullptr) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (dx != nullptr) {
    RmsNormBackwardDxKernel<<<RowBlocks(n), kThreads, 0, stream>>>(dy, x, w, inv_rms, dx, n, c);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  if (dw != nullptr) {
    const int64_t chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
    if (chunks > kMaxBlocks) return cudaErrorInvalidValue;
    const unsigned column_blocks = static_cast<unsigned>((c + kThreads - 1) / kThreads);
    RmsNormBackwardDwPartialKernel<<<dim3(column_blocks, static_cast<unsigned>(chunks)), kThreads,
                                     0, stream>>>(dy, x, inv_rms, scratch, n, c);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    RmsNormBackwardDwSumKernel<<<column_blocks, kThreads, 0, stream>>>(scratch, dw, chunks, c);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace llamapro::cuda
