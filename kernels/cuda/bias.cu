#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/bias.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 65535;
// Rows summed per block into one partial of dbias. Fixed, so the order of
// the fp32 additions does not depend on the GPU.
constexpr int64_t kRowsPerChunk = 64;

// One block per row (grid-strided), threads across the row.
__global__ void BiasForwardKernel(const uint16_t* __restrict__ bias, uint16_t* __restrict__ y,
                                  int64_t n, int64_t c, bool accumulate) {
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    uint16_t* yr = y + r * c;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) {
      yr[i] = accumulate ? F32ToBF16(BF16ToF32(yr[i]) + BF16ToF32(bias[i])) : bias[i];
    }
  }
}

// partial[chunk, i] = sum over the chunk's rows of dy[r, i], in row order.
// Grid: (column blocks, row chunks).
__global__ void BiasBackwardPartialKernel(const uint16_t* __restrict__ dy,
                                          float* __restrict__ partial, int64_t n, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= c) return;
  const int64_t first = blockIdx.y * kRowsPerChunk;
  const int64_t last = first + kRowsPerChunk < n ? first + kRowsPerChunk : n;
  float acc = 0.0f;
  for (int64_t r = first; r < last; ++r) acc += BF16ToF32(dy[r * c + i]);
  partial[blockIdx.y * c + i] = acc;
}

// dbias[i] += sum over chunks of partial[chunk, i], in chunk order.
__global__ void BiasBackwardSumKernel(const float* __restrict__ partial, float* __restrict__ dbias,
                                      int64_t chunks, int64_t c) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= c) return;
  float acc = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) acc += partial[k * c + i];
  dbias[i] += acc;
}

}  // namespace

cudaError_t BiasForward(const uint16_t* bias, uint16_t* y, int64_t n, int64_t c, bool accumulate,
                        cudaStream_t stream) {
  if (n < 0 || c <= 0 || bias == nullptr) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const int blocks = static_cast<int>(n < kMaxBlocks ? n : kMaxBlocks);
  BiasForwardKernel<<<blocks, kThreads, 0, stream>>>(bias, y, n, c, accumulate);
  return cudaGetLastError();
}

int64_t BiasBackwardScratchSize(int64_t n, int64_t c) {
  return (n + kRowsPerChunk - 1) / kRowsPerChunk * c;
}

cudaError_t BiasBackward(const uint16_t* dy, float* dbias, int64_t n, int64_t c, float* scratch,
                         cudaStream_t stream) {
  if (n < 0 || c <= 0 || dbias == nullptr || scratch == nullptr) return cudaErrorInvalidValue;
  const int64_t chunks = (n + kRowsPerChunk - 1) / kRowsPerChunk;
  if (chunks > kMaxBlocks) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const unsigned column_blocks = static_cast<unsigned>((c + kThreads - 1) / kThreads);
  BiasBackwardPartialKernel<<<dim3(column_blocks, static_cast<unsigned>(chunks)), kThreads, 0,
                              stream>>>(dy, scratch, n, c);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  BiasBackwardSumKernel<<<column_blocks, kThreads, 0, stream>>>(scratch, dbias, chunks, c);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
