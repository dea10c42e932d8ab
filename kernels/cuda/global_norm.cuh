// Global gradient norm over many fp32 tensors in one launch, and scaling
// (torch.nn.utils.clip_grad_norm_ semantics, as train/optimizer.cc's
// GlobalGradNorm / ScaleGradients / ClipGradNorm on the CPU).
//
// `tensors` is a device array of `count` descriptors with offsets from
// AssignOffsets (multi_tensor.h); `total` is its return value. Launchers
// enqueue on `stream` and return the launch status (cudaErrorInvalidValue for
// bad counts); they never synchronize and never allocate, so the norm stays
// on the device and clipping needs no round trip to the host.
#ifndef LLAMAPRO_KERNELS_CUDA_GLOBAL_NORM_CUH_
#define LLAMAPRO_KERNELS_CUDA_GLOBAL_NORM_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/multi_tensor.h"

namespace llamapro::cuda {

// n fp32 values on the device.
struct F32Tensor {
  float* data = nullptr;
  int64_t n = 0;
  int64_t offset = 0;  // Set by AssignOffsets.
};

// Doubles of scratch SumOfSquares needs (a constant).
int64_t SumOfSquaresScratchSize();

// *sum_squares (one double on the device) = sum of x^2 over every element,
// squared and accumulated in fp64. Deterministic: a fixed number of blocks,
// each summing fixed chunks in order, then one block summing their partials
// in order. `scratch` holds SumOfSquaresScratchSize() doubles.
cudaError_t SumOfSquares(const F32Tensor* tensors, int count, int64_t total, double* sum_squares,
                         double* scratch, cudaStream_t stream);

// x *= scale for every element (fp32 multiply, as ScaleGradients).
cudaError_t ScaleTensors(const F32Tensor* tensors, int count, int64_t total, float scale,
                         cudaStream_t stream);

// ClipGradNorm's step after the norm: coef = max_norm / (sqrt(*sum_squares) +
// 1e-6) in double; if max_norm > 0 and coef < 1, x *= float(coef) for every
// element, otherwise nothing changes. sum_squares is the device double
// SumOfSquares wrote.
cudaError_t ClipByGlobalNorm(const F32Tensor* tensors, int count, int64_t total,
                             const double* sum_squares, double max_norm, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_GLOBAL_NORM_CUH_
