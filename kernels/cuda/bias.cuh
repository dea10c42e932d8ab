// Bias of a linear layer on the device: bf16 storage, fp32 math.
//
// y, dy: [N, C] bf16 (row-major); bias: [C] bf16; dbias: [C] fp32. Launchers
// enqueue on `stream` and return the launch status (cudaErrorInvalidValue for
// bad sizes or a missing scratch, before anything is enqueued); they never
// synchronize and never allocate. Device pointers.
#ifndef LLAMAPRO_KERNELS_CUDA_BIAS_CUH_
#define LLAMAPRO_KERNELS_CUDA_BIAS_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

// y[r, i] = bias[i] (accumulate == false: every row set to the bias, e.g.
// before a GEMM with beta = 1 adds x W^T in fp32), or y[r, i] += bias[i]
// (accumulate == true; one fp32 addition, rounded to bf16).
cudaError_t BiasForward(const uint16_t* bias, uint16_t* y, int64_t n, int64_t c, bool accumulate,
                        cudaStream_t stream);

// Floats of scratch BiasBackward needs.
int64_t BiasBackwardScratchSize(int64_t n, int64_t c);

// dbias[i] += sum over rows r of dy[r, i], accumulated in fp32 over fixed row
// chunks in a fixed order (deterministic). `scratch` holds
// BiasBackwardScratchSize(n, c) floats.
cudaError_t BiasBackward(const uint16_t* dy, float* dbias, int64_t n, int64_t c, float* scratch,
                         cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_BIAS_CUH_
