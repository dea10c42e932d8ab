// Device helpers for bf16 storage with fp32 math, shared by the kernels in
// this folder (device code only; include from .cu files).
//
// bf16 values are stored as uint16_t, the same bits kernels/dtype.h uses on
// the CPU. Conversions to bf16 round to nearest even and keep NaN quiet, bit
// for bit as FloatToBF16 does, so a CUDA result rounded here equals the CPU's
// rounding of the same fp32 value.
#ifndef LLAMAPRO_KERNELS_CUDA_BF16_CUH_
#define LLAMAPRO_KERNELS_CUDA_BF16_CUH_

#include <cstdint>

namespace llamapro::cuda {

__device__ __forceinline__ float BF16ToF32(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

__device__ __forceinline__ uint16_t F32ToBF16(float value) {
  const uint32_t u = __float_as_uint(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Two bf16 values packed in one 32-bit word: element 2i in the low half,
// element 2i + 1 in the high half (little-endian memory order).
__device__ __forceinline__ float LowBF16(uint32_t pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float HighBF16(uint32_t pair) {
  return __uint_as_float(pair & 0xffff0000u);
}
__device__ __forceinline__ uint32_t PackBF16(float low, float high) {
  return static_cast<uint32_t>(F32ToBF16(low)) | (static_cast<uint32_t>(F32ToBF16(high)) << 16);
}

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_BF16_CUH_
