// Helpers for the CUDA conformance tests: poisoned device buffers, random
// bf16 inputs, and the error measure every op is judged by,
// ||out - ref|| / ||ref|| against the CPU reference run in double, with NaN
// and infinity failing outright.
//
// Header-only, with no dependency beyond GoogleTest, the CUDA runtime and
// kernels/dtype.h, so the test binaries stay carryable to a GPU machine
// (docs/gpu.md).
#ifndef LLAMAPRO_TESTS_CUDA_CUDA_TEST_UTIL_H_
#define LLAMAPRO_TESTS_CUDA_CUDA_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "kernels/dtype.h"

namespace llamapro::cuda_test {

// Error bounds of the issue: outputs stored in bf16, and fp32 paths.
inline constexpr double kBF16Tolerance = 1e-2;
inline constexpr double kF32Tolerance = 1e-5;

// Fixture base: skips every test where no CUDA device is usable.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
  }
};

// n values of T on the device, freed on destruction. Every byte is set to
// 0xff on allocation and by Poison(): all-ones bits are NaN in bf16, fp32 and
// fp64, so an element a kernel should have written but did not shows up as
// NaN and fails the comparison.
template <typename T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : n_(n) {
    void* data = nullptr;
    LP_CUDA_CHECK(cudaMalloc(&data, std::max<size_t>(n, 1) * sizeof(T)));
    data_ = static_cast<T*>(data);
    Poison();
  }
  explicit DeviceBuffer(const std::vector<T>& values) : DeviceBuffer(values.size()) {
    Upload(values);
  }
  ~DeviceBuffer() { cudaFree(data_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return data_; }
  size_t size() const { return n_; }
  void Poison() { LP_CUDA_CHECK(cudaMemset(data_, 0xff, std::max<size_t>(n_, 1) * sizeof(T))); }
  void Upload(const std::vector<T>& values) {
    CheckSize(values.size());
    LP_CUDA_CHECK(cudaMemcpy(data_, values.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  // Waits for the device, then copies back.
  std::vector<T> Download() const {
    LP_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> values(n_);
    LP_CUDA_CHECK(cudaMemcpy(values.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return values;
  }

 private:
  void CheckSize(size_t n) const {
    if (n != n_) {
      cuda::internal::Fail("DeviceBuffer: uploading " + std::to_string(n) + " values into " +
                           std::to_string(n_));
    }
  }

  size_t n_;
  T* data_ = nullptr;
};

// n bf16 values uniform in [-scale, scale) (never all zero; the seed varies
// per call site).
inline std::vector<uint16_t> RandomBF16(size_t n, std::mt19937* rng, float scale = 1.0f) {
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<uint16_t> values(n);
  for (uint16_t& v : values) v = FloatToBF16(dist(*rng));
  return values;
}

inline std::vector<float> RandomF32(size_t n, std::mt19937* rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> values(n);
  for (float& v : values) v = dist(*rng);
  return values;
}

inline std::vector<double> ToDouble(const std::vector<uint16_t>& bf16) {
  std::vector<double> values(bf16.size());
  for (size_t i = 0; i < bf16.size(); ++i) values[i] = BF16ToFloat(bf16[i]);
  return values;
}

template <typename T>
std::vector<double> ToDouble(const std::vector<T>& values) {
  return std::vector<double>(values.begin(), values.end());
}

// bf16 rounding of a double (through fp32, as the device rounds its fp32).
inline std::vector<uint16_t> ToBF16(const std::vector<double>& values) {
  std::vector<uint16_t> bf16(values.size());
  for (size_t i = 0; i < values.size(); ++i) bf16[i] = FloatToBF16(static_cast<float>(values[i]));
  return bf16;
}

inline std::vector<float> ToF32(const std::vector<double>& values) {
  return std::vector<float>(values.begin(), values.end());
}

// Passes when out has ref's size, every value of out is finite, ref is not
// all zero, and ||out - ref|| / ||ref|| <= tolerance. With row_size > 0 the
// same bound must also hold for every row of row_size values whose reference
// is not zero: a few wrong rows (a tile edge, a missed contribution) can hide
// in the norm over all values, but not in their own. Prints the errors either
// way, so a run on a GPU records how close each op came.
inline ::testing::AssertionResult Close(const std::string& what, const std::vector<double>& out,
                                        const std::vector<double>& ref, double tolerance,
                                        size_t row_size = 0) {
  if (out.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << what << ": " << out.size() << " values, reference has " << ref.size();
  }
  int64_t non_finite = 0;
  int64_t first_non_finite = -1;
  double diff = 0;
  double norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      if (non_finite++ == 0) first_non_finite = static_cast<int64_t>(i);
      continue;
    }
    diff += (out[i] - ref[i]) * (out[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  if (non_finite > 0) {
    return ::testing::AssertionFailure() << what << ": " << non_finite << " of " << out.size()
                                         << " values are NaN or infinite (first at index "
                                         << first_non_finite << ": unwritten or overflowed)";
  }
  if (!(norm > 0)) return ::testing::AssertionFailure() << what << ": the reference is all zero";
  const double error = std::sqrt(diff / norm);
  double worst_row_error = 0;
  size_t worst_row = 0;
  for (size_t begin = 0; row_size > 0 && begin < out.size(); begin += row_size) {
    double row_diff = 0;
    double row_norm = 0;
    for (size_t i = begin; i < std::min(begin + row_size, out.size()); ++i) {
      row_diff += (out[i] - ref[i]) * (out[i] - ref[i]);
      row_norm += ref[i] * ref[i];
    }
    if (row_norm > 0 && std::sqrt(row_diff / row_norm) > worst_row_error) {
      worst_row_error = std::sqrt(row_diff / row_norm);
      worst_row = begin / row_size;
    }
  }
  std::printf("  %-28s rel. error %.3g, worst row %.3g (tolerance %.0g, %zu values)\n",
              what.c_str(), error, worst_row_error, tolerance, out.size());
  if (!(error <= tolerance)) {
    return ::testing::AssertionFailure()
           << what << ": ||out - ref|| / ||ref|| = " << error << " > " << tolerance;
  }
  if (!(worst_row_error <= tolerance)) {
    return ::testing::AssertionFailure()
           << what << ": row " << worst_row << " of " << row_size << " values has relative error "
           << worst_row_error << " > " << tolerance;
  }
  return ::testing::AssertionSuccess();
}

}  // namespace llamapro::cuda_test

#endif  // LLAMAPRO_TESTS_CUDA_CUDA_TEST_UTIL_H_
