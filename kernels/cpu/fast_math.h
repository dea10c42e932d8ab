// Vectorisable math shared by the fast CPU kernels (internal to kernels/cpu).
#ifndef LLAMAPRO_KERNELS_CPU_FAST_MATH_H_
#define LLAMAPRO_KERNELS_CPU_FAST_MATH_H_

#include <algorithm>
#include <bit>
#include <cstdint>

namespace llamapro::cpu {

// exp(x) within 1.4 ulp (Cephes' expf polynomial), with x clamped to
// [-87, 88] so the result stays a normal float. Unlike glibc's expf it is
// plain arithmetic, so `omp simd` loops over it vectorize; exp dominates the
// non-GEMM time of the attention and cross-entropy backward passes.
[[gnu::always_inline]] inline float FastExp(float x) {
  // Two unconditional selects (not a nested ?:, whose conditional second
  // comparison blocks if-conversion under -ftrapping-math).
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // n = round(x / ln 2): adding 1.5 * 2^23 leaves the integer in the low bits.
  constexpr float kRoundShift = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRoundShift) - kRoundShift;
  // r = x - n ln 2, with ln 2 split in two: 0.693359375 has few mantissa bits,
  // so n times it is exact.
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto exponent = static_cast<int32_t>(n) + 127;
  return p * std::bit_cast<float>(exponent << 23);
}

// sum_i a_i b_i c_i; the vectorised summation order is fixed at compile time,
// so results are deterministic.
[[gnu::always_inline]] inline float Dot3(const float* a, const float* b, const float* c,
                                         int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i] * c[i];
  return sum;
}

[[gnu::always_inline]] inline float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// max_i a_i for n >= 1. Eight explicit lanes rather than an `omp simd`
// max-reduction, which GCC 12 keeps in memory (a store-forwarding stall per
// vector).
[[gnu::always_inline]] inline float Max(const float* a, int64_t n) {
  constexpr int kLanes = 8;
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, a[0]);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = a[i + l] > lanes[l] ? a[i + l] : lanes[l];
  }
  float max_value = a[0];
  for (; i < n; ++i) max_value = a[i] > max_value ? a[i] : max_value;
  for (float lane : lanes) max_value = lane > max_value ? lane : max_value;
  return max_value;
}

// First key that query t attends to (ref::Attention: (t - window, t]).
inline int64_t FirstKey(int64_t t, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
}

}  // namespace llamapro::cpu

#endif  // LLAMAPRO_KERNELS_CPU_FAST_MATH_H_
