#include "kernels/dtype.h"

#include <array>
#include <cmath>
#include <vector>

namespace llamapro {
namespace {

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  absl::string_view torch_name;
  size_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes = {{
    {DType::kBool, "BOOL", "bool", 1},
    {DType::kU8, "U8", "uint8", 1},
    {DType::kI8, "I8", "int8", 1},
    {DType::kI16, "I16", "int16", 2},
    {DType::kU16, "U16", "uint16", 2},
    {DType::kF16, "F16", "float16", 2},
    {DType::kBF16, "BF16", "bfloat16", 2},
    {DType::kI32, "I32", "int32", 4},
    {DType::kU32, "U32", "uint32", 4},
    {DType::kF32, "F32", "float32", 4},
    {DType::kF64, "F64", "float64", 8},
    {DType::kI64, "I64", "int64", 8},
    {DType::kU64, "U64", "uint64", 8},
    {DType::kF8E4M3, "F8_E4M3", "float8_e4m3fn", 1},
    {DType::kF8E5M2, "F8_E5M2", "float8_e5m2", 1},
}};

const DTypeInfo& Info(DType dtype) { return kDTypes[static_cast<size_t>(dtype)]; }

}  // namespace

size_t DTypeSize(DType dtype) { return Info(dtype).size; }
absl::string_view DTypeName(DType dtype) { return Info(dtype).name; }
absl::string_view TorchDTypeName(DType dtype) { return Info(dtype).torch_name; }

std::optional<DType> ParseDTypeName(absl::string_view name) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.name == name) return info.dtype;
  }
  return std::nullopt;
}

bool IsModelFloat(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16;
}

float F16ToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) {  // Inf or NaN.
    return FloatFromBits(sign | 0x7f800000u | (mantissa << 13) | (mantissa != 0 ? 0x400000u : 0));
  }
  if (exponent == 0) {
    if (mantissa == 0) return FloatFromBits(sign);
    // Subnormal: value = mantissa * 2^-24, exact in fp32.
    float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return FloatFromBits(sign | FloatBits(magnitude));
  }
  return FloatFromBits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

uint16_t FloatToF16(float f) {
  uint32_t u = FloatBits(f);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN -> quiet NaN.
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // Rounds to >= 65520: infinity.
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): round abs * 2^24 to an integer, ties to even.
    // The float addition performs exactly that rounding: 0.5 * 2^24 ... fits.
    float magnitude = FloatFromBits(abs);
    float scaled = magnitude * 0x1p24f;  // Exact: a power-of-two scale.
    // Adding 2^23 forces rounding to an integer in the current (nearest-even) mode.
    float rounded = (scaled + 0x1p23f) - 0x1p23f;
    return sign | static_cast<uint16_t>(rounded);
  }
  // Normal: rebias the exponent and round the 13 dropped mantissa bits.
  uint32_t rebased = abs - (112u << 23);
  uint32_t rounding_bias = 0xfffu + ((rebased >> 13) & 1u);
  return sign | static_cast<uint16_t>((rebased + rounding_bias) >> 13);
}

bool ConvertToF32(const void* src, DType src_type, size_t n, float* dst) {
  switch (src_type) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return true;
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = BF16ToFloat(s[i]);
      return true;
    }
    case DType::kF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = F16ToFloat(s[i]);
      return true;
    }
    case DType::kF64: {
      const auto* s = static_cast<const double*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return true;
    }
    default:
      return false;
  }
}

bool ConvertFromF32(const float* src, size_t n, DType dst_type, void* dst) {
  switch (dst_type) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return true;
    case DType::kBF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = FloatToBF16(src[i]);
      return true;
    }
    case DType::kF16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = FloatToF16(src[i]);
      return true;
    }
    default:
      return false;
  }
}

bool ConvertFloat(const void* src, DType src_type, size_t n, DType dst_type, void* dst) {
  if (!IsModelFloat(src_type) || !IsModelFloat(dst_type)) return false;
  if (src_type == dst_type) {
    std::memcpy(dst, src, n * DTypeSize(src_type));
    return true;
  }
  if (src_type == DType::kF32)
    return ConvertFromF32(static_cast<const float*>(src), n, dst_type, dst);
  if (dst_type == DType::kF32) return ConvertToF32(src, src_type, n, static_cast<float*>(dst));
  constexpr size_t kBlock = 4096;
  float buffer[kBlock];
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  for (size_t done = 0; done < n; done += kBlock) {
    size_t m = std::min(kBlock, n - done);
    ConvertToF32(s + done * 2, src_type, m, buffer);
    ConvertFromF32(buffer, m, dst_type, d + done * 2);
  }
  return true;
}

}  // namespace llamapro
