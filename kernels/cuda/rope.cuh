// Rotary position embedding in Hugging Face's rotate-half convention, in
// place on bf16 activations, with fp32 math: ref::ApplyRope and
// ref::ApplyRopeBackward (kernels/cpu/reference*.h).
//
// x: [B, T, heads, D] bf16 (D even); cos_table, sin_table: [T, D/2] fp32, the
// tables ref::RopeTables builds (the model uploads the CPU's). Launchers
// enqueue on `stream` and return the launch status (cudaErrorInvalidValue for
// bad sizes, before anything is enqueued); they never synchronize. Device
// pointers.
#ifndef LLAMAPRO_KERNELS_CUDA_ROPE_CUH_
#define LLAMAPRO_KERNELS_CUDA_ROPE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

// Rotates each pair (i, i + D/2) at position t by +angle(t, i).
cudaError_t RopeForward(uint16_t* x, const float* cos_table, const float* sin_table, int64_t batch,
                        int64_t seq_len, int64_t heads, int64_t head_dim, cudaStream_t stream);

// The transpose (rotation by -angle), in place on a gradient.
cudaError_t RopeBackward(uint16_t* dx, const float* cos_table, const float* sin_table,
                         int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim,
                         cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_ROPE_CUH_
