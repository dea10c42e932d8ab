#include "kernels/dtype.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace llamapro {
namespace {

// The nearest representable value among `grid` (sorted, finite, as doubles),
// ties to the one whose bit pattern is even: the IEEE rule, by brute force.
template <typename Decode>
uint16_t NearestByBruteForce(float f, Decode decode) {
  double best_diff = std::numeric_limits<double>::infinity();
  uint16_t best = 0;
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float v = decode(static_cast<uint16_t>(bits));
    if (!std::isfinite(v) || std::signbit(v) != std::signbit(f)) continue;
    const double diff = std::abs(static_cast<double>(v) - static_cast<double>(f));
    if (diff < best_diff || (diff == best_diff && (bits & 1) == 0)) {
      best_diff = diff;
      best = static_cast<uint16_t>(bits);
    }
  }
  return best;
}

TEST(DTypeTest, NamesRoundTripForEverySafetensorsType) {
  for (const char* name : {"BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
                           "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"}) {
    auto dtype = ParseDTypeName(name);
    ASSERT_TRUE(dtype.has_value()) << name;
    EXPECT_EQ(DTypeName(*dtype), name);
  }
  EXPECT_FALSE(ParseDTypeName("FP32").has_value());
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF64), 8u);
  EXPECT_EQ(TorchDTypeName(DType::kBF16), "bfloat16");
}

TEST(DTypeTest, EveryF16ValueSurvivesARoundTripThroughF32) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float f = F16ToFloat(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f))));
      continue;
    }
    EXPECT_EQ(FloatToF16(f), h) << "bits " << bits;
  }
}

TEST(DTypeTest, EveryBF16ValueSurvivesARoundTripThroughF32) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<uint16_t>(bits);
    const float f = BF16ToFloat(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(FloatToBF16(f), h) << "bits " << bits;
  }
}

TEST(DTypeTest, F16RoundingIsNearestEvenIncludingSubnormals) {
  std::mt19937 rng(7);
  std::vector<float> probes = {1e-8f,
                               3e-8f,
                               5.96e-8f,
                               2.98e-8f,
                               6.1e-5f,
                               65504.0f,
                               65519.9f,
                               1.0f + 1.0f / 2048.0f,
                               1.0f + 3.0f / 2048.0f};
  std::uniform_real_distribution<float> exponent(-26.0f, 16.0f);
  for (int i = 0; i < 300; ++i) probes.push_back(std::exp2(exponent(rng)) * (1.0f + i % 7 / 7.0f));
  for (float f : probes) {
    if (f >= 65520.0f) continue;  // Overflows to infinity; checked below.
    for (float s : {f, -f}) {
      EXPECT_EQ(FloatToF16(s), NearestByBruteForce(s, F16ToFloat)) << s;
    }
  }
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // Ties away from the largest finite: infinity.
  EXPECT_EQ(FloatToF16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(std::nanf("")))));
  EXPECT_EQ(FloatToF16(-0.0f), 0x8000);
}

TEST(DTypeTest, BF16RoundingIsNearestEven) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> exponent(-120.0f, 120.0f);
  for (int i = 0; i < 300; ++i) {
    const float f = std::exp2(exponent(rng)) * (1.0f + static_cast<float>(i % 13) / 13.0f);
    EXPECT_EQ(FloatToBF16(f), NearestByBruteForce(f, BF16ToFloat)) << f;
  }
  // Exact ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7; the even one is 1.
  EXPECT_EQ(FloatToBF16(1.0f + 0x1p-8f), FloatToBF16(1.0f));
  EXPECT_EQ(FloatToBF16(1.0f + 3 * 0x1p-8f), FloatToBF16(1.0f + 0x1p-6f));
  EXPECT_TRUE(std::isnan(BF16ToFloat(FloatToBF16(std::nanf("")))));
}

TEST(DTypeTest, ArrayConversionsMatchScalarOnesAndRefuseNonFloatTypes) {
  std::vector<float> values = {0.0f, -1.5f, 3.14159f, 1e-6f, 60000.0f};
  std::vector<uint16_t> bf16(values.size()), f16(values.size());
  ASSERT_TRUE(ConvertFromF32(values.data(), values.size(), DType::kBF16, bf16.data()));
  ASSERT_TRUE(ConvertFromF32(values.data(), values.size(), DType::kF16, f16.data()));
  std::vector<uint16_t> bf16_to_f16(values.size());
  ASSERT_TRUE(
      ConvertFloat(bf16.data(), DType::kBF16, values.size(), DType::kF16, bf16_to_f16.data()));
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(bf16[i], FloatToBF16(values[i]));
    EXPECT_EQ(f16[i], FloatToF16(values[i]));
    EXPECT_EQ(bf16_to_f16[i], FloatToF16(BF16ToFloat(bf16[i])));
  }
  float out[2];
  int32_t ints[2] = {1, 2};
  EXPECT_FALSE(ConvertToF32(ints, DType::kI32, 2, out));
  EXPECT_FALSE(ConvertFromF32(out, 2, DType::kI64, ints));
}

}  // namespace
}  // namespace llamapro
