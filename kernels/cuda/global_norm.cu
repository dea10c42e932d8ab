#include "kernels/cuda/global_norm.cuh"
#include "kernels/cuda/reduce.cuh"

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;
// Fixed block count of the sum (the partials' order depends on it, so it is
// a constant, not a function of the GPU).
constexpr int64_t kSumBlocks = 1024;
constexpr int64_t kMaxScaleBlocks = 8192;

__global__ void SumOfSquaresPartialKernel(const F32Tensor* __restrict__ tensors, int count,
                                          int64_t total, double* __restrict__ partial) {
  __shared__ double scratch[32];
  const int64_t chunks = (total + kMultiTensorChunk - 1) / kMultiTensorChunk;
  double acc = 0.0;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    ForEachInChunk(tensors, count, total, chunk, [&](const F32Tensor& t, int64_t j) {
      const double x = t.data[j];
      acc += x * x;
    });
  }
  acc = BlockSum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void SumPartialsKernel(const double* __restrict__ partial, int64_t count,
                                  double* __restrict__ sum) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = BlockSum(acc, scratch);
  if (threadIdx.x == 0) *sum = acc;
}

// scale_from_norm: if not nullptr, the scale is derived from the sum of
// squares on the device (clipping); otherwise `scale` is used.
__global__ void ScaleKernel(const F32Tensor* __restrict__ tensors, int count, int64_t total,
                            float scale, const double* __restrict__ scale_from_norm,
                            double max_norm) {
  if (scale_from_norm != nullptr) {
    const double coef = max_norm / (sqrt(*scale_from_norm) + 1e-6);
    if (!(max_norm > 0 && coef < 1)) return;  // Uniform over the grid.
    scale = static_cast<float>(coef);
  }
  const int64_t chunks = (total + kMultiTensorChunk - 1) / kMultiTensorChunk;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    ForEachInChunk(tensors, count, total, chunk,
                   [&](const F32Tensor& t, int64_t j) { t.data[j] = __fmul_rn(t.data[j], scale); });
  }
}

bool BadCounts(int count, int64_t total) {
  return count < 0 || total < 0 || (total > 0 && count == 0);
}

cudaError_t LaunchScale(const F32Tensor* tensors, int count, int64_t total, float scale,
                        const double* scale_from_norm, double max_norm, cudaStream_t stream) {
  if (BadCounts(count, total)) return cudaErrorInvalidValue;
  if (total == 0) return cudaSuccess;
  const int64_t chunks = (total + kMultiTensorChunk - 1) / kMultiTensorChunk;
  const int64_t blocks = chunks < kMaxScaleBlocks ? chunks : kMaxScaleBlocks;
  ScaleKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(tensors, count, total, scale,
                                                                      scale_from_norm, max_norm);
  return cudaGetLastError();
}

}  // namespace

int64_t SumOfSquaresScratchSize() { return kSumBlocks; }

cudaError_t SumOfSquares(const F32Tensor* tensors, int count, int64_t total, double* sum_squares,
                         double* scratch, cudaStream_t stream) {
  if (BadCounts(count, total)) return cudaErrorInvalidValue;
  if (total == 0) return cudaMemsetAsync(sum_squares, 0, sizeof(double), stream);
  SumOfSquaresPartialKernel<<<static_cast<unsigned>(kSumBlocks), kThreads, 0, stream>>>(
      tensors, count, total, scratch);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  SumPartialsKernel<<<1, kThreads, 0, stream>>>(scratch, kSumBlocks, sum_squares);
  return cudaGetLastError();
}

cudaError_t ScaleTensors(const F32Tensor* tensors, int count, int64_t total, float scale,
                         cudaStream_t stream) {
  return LaunchScale(tensors, count, total, scale, nullptr, 0.0, stream);
}

cudaError_t ClipByGlobalNorm(const F32Tensor* tensors, int count, int64_t total,
                             const double* sum_squares, double max_norm, cudaStream_t stream) {
  if (sum_squares == nullptr) return cudaErrorInvalidValue;
  return LaunchScale(tensors, count, total, 1.0f, sum_squares, max_norm, stream);
}

}  // namespace llamapro::cuda
