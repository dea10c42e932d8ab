// CUDA casts against the CPU conversions (kernels/dtype.h), bit for bit.
// Skipped where no CUDA device is usable (no driver, no GPU).
#include "kernels/cuda/cast.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "kernels/dtype.h"

namespace llamapro {
namespace {

class CudaCastTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device";
    std::printf("device 0: %s\n", cuda::DeviceDescription(0).c_str());
  }
};

std::vector<float> Probes() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          1.0f + 0x1p-8f,  // Tie: rounds to even (1.0).
                          1.0f + 3 * 0x1p-8f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::max()};
  std::mt19937 rng(5);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 100000; ++i) v.push_back(FloatFromBits(bits(rng)));
  return v;
}

TEST_F(CudaCastTest, F32ToBF16AndBackMatchTheCpuBitForBit) {
  const std::vector<float> input = Probes();
  const int64_t n = static_cast<int64_t>(input.size());
  float* d_in = nullptr;
  uint16_t* d_half = nullptr;
  float* d_out = nullptr;
  LP_CUDA_CHECK(cudaMalloc(&d_in, n * sizeof(float)));
  LP_CUDA_CHECK(cudaMalloc(&d_half, n * sizeof(uint16_t)));
  LP_CUDA_CHECK(cudaMalloc(&d_out, n * sizeof(float)));
  LP_CUDA_CHECK(cudaMemcpy(d_in, input.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  ASSERT_EQ(cuda::CastF32ToBF16(d_in, d_half, n, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::CastBF16ToF32(d_half, d_out, n, nullptr), cudaSuccess);
  LP_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> half(n);
  std::vector<float> out(n);
  LP_CUDA_CHECK(cudaMemcpy(half.data(), d_half, n * sizeof(uint16_t), cudaMemcpyDeviceToHost));
  LP_CUDA_CHECK(cudaMemcpy(out.data(), d_out, n * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(d_in);
  cudaFree(d_half);
  cudaFree(d_out);
  int mismatches = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t expected = FloatToBF16(input[i]);
    if (half[i] != expected || FloatBits(out[i]) != FloatBits(BF16ToFloat(expected))) {
      if (++mismatches < 5)
        ADD_FAILURE() << "input " << input[i] << " (bits 0x" << std::hex << FloatBits(input[i])
                      << ")";
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(CudaDeviceTest, DeviceCountNeverFailsAndIsNonNegative) {
  EXPECT_GE(cuda::DeviceCount(), 0);  // Also without a driver: errors mean "no device".
}

}  // namespace
}  // namespace llamapro
