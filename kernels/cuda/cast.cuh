// Casts between bf16 storage and fp32 on the device.
//
// Launchers enqueue on `stream` and return the launch status; they do not
// synchronize. Pointers are device pointers. Results match the CPU
// conversions in kernels/dtype.h bit for bit (round to nearest even, NaN kept
// quiet).
#ifndef LLAMAPRO_KERNELS_CUDA_CAST_CUH_
#define LLAMAPRO_KERNELS_CUDA_CAST_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

cudaError_t CastBF16ToF32(const uint16_t* src, float* dst, int64_t n, cudaStream_t stream);
cudaError_t CastF32ToBF16(const float* src, uint16_t* dst, int64_t n, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_CAST_CUH_
