// RMSNorm forward (saving inv_rms) and backward on the device: bf16 storage,
// fp32 math. Semantics of ref::RmsNormForward / ref::RmsNormBackward
// (kernels/cpu/reference_backward.h).
//
// x, y, dy, dx: [N, C] bf16; w: [C] bf16; inv_rms: [N] fp32; dw: [C] fp32.
// Launchers enqueue on `stream` and return the launch status
// (cudaErrorInvalidValue for bad sizes, before anything is enqueued); they
// never synchronize and never allocate. Pointers are device pointers.
#ifndef LLAMAPRO_KERNELS_CUDA_RMSNORM_CUH_
#define LLAMAPRO_KERNELS_CUDA_RMSNORM_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

// y = x * inv_rms * w with inv_rms[r] = 1 / sqrt(mean(x_r^2) + eps), stored.
// y may alias x.
cudaError_t RmsNormForward(const uint16_t* x, const uint16_t* w, uint16_t* y, float* inv_rms,
                           int64_t n, int64_t c, float eps, cudaStream_t stream);

// Floats of scratch RmsNormBackward needs when dw != nullptr.
int64_t RmsNormBackwardScratchSize(int64_t n, int64_t c);

// dx_k = dy_k w_k s - x_k s^3 / C * sum_i dy_i w_i x_i (overwritten; nullptr
// skips); dw_i += sum_r dy_ri x_ri s_r (accumulated in fp32; nullptr skips),
// summed over fixed row chunks in a fixed order (deterministic). `scratch`
// holds RmsNormBackwardScratchSize(n, c) floats (unused when dw is nullptr).
// dx must not alias x or dy.
cudaError_t RmsNormBackward(const uint16_t* dy, const uint16_t* x, const uint16_t* w,
                            const float* inv_rms, uint16_t* dx, float* dw, int64_t n, int64_t c,
                            float* scratch, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_RMSNORM_CUH_
