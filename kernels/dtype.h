// Element types of tensors as safetensors names them, and conversions between
// the floating-point storage types and fp32.
//
// Conversions round to nearest, ties to even (as PyTorch does), keep the sign
// of zero, map infinities to infinities and NaN to a quiet NaN. All functions
// are thread-safe.
#ifndef LLAMAPRO_KERNELS_DTYPE_H_
#define LLAMAPRO_KERNELS_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

#include "absl/strings/string_view.h"

namespace llamapro {

enum class DType : uint8_t {
  kBool,
  kU8,
  kI8,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64,
  kF8E4M3,
  kF8E5M2,
};

// Bytes per element.
size_t DTypeSize(DType dtype);
// The safetensors name: "F32", "BF16", "F8_E4M3", ...
absl::string_view DTypeName(DType dtype);
// Parses a safetensors dtype name; nullopt if unknown.
std::optional<DType> ParseDTypeName(absl::string_view name);
// The torch name used in config.json's torch_dtype ("float32", "bfloat16", ...).
absl::string_view TorchDTypeName(DType dtype);
// True for the types the model math reads and writes: F32, F16, BF16.
bool IsModelFloat(DType dtype);

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float FloatFromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float BF16ToFloat(uint16_t h) { return FloatFromBits(static_cast<uint32_t>(h) << 16); }

inline uint16_t FloatToBF16(float f) {
  uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN
  uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

float F16ToFloat(uint16_t h);
uint16_t FloatToF16(float f);

// dst[i] = float(src[i]) for src of type F32, F16, BF16 or F64.
// Returns false (and writes nothing) for any other type.
bool ConvertToF32(const void* src, DType src_type, size_t n, float* dst);
// dst[i] = src[i] rounded to F32, F16 or BF16. Returns false for other types.
bool ConvertFromF32(const float* src, size_t n, DType dst_type, void* dst);
// Converts between two model float types through fp32 (exact for widening).
bool ConvertFloat(const void* src, DType src_type, size_t n, DType dst_type, void* dst);

}  // namespace llamapro

#endif  // LLAMAPRO_KERNELS_DTYPE_H_
