// CUDA conformance of the multi-tensor optimizer kernels: AdamW (against the
// update train/optimizer.cc performs, written out below in fp32 exactly as
// there, since linking the training library would tie this binary to our
// Debian packages) and the global gradient norm with clipping (against
// GlobalGradNorm / ClipGradNorm's arithmetic). Tensor sizes straddle the
// kernels' 4096-element chunks and include an empty tensor. Skipped where no
// CUDA device is usable.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/adamw.cuh"
#include "kernels/cuda/global_norm.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace llamapro {
namespace {

using cuda_test::Close;
using cuda_test::DeviceBuffer;
using cuda_test::kF32Tolerance;
using cuda_test::RandomF32;
using cuda_test::ToDouble;

class CudaOptimizerTest : public cuda_test::CudaTest {};

const std::vector<int64_t> kSizes = {1, 4095, 4097, 10000, 0, 3, 8192, 77};

struct HostAdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// train/optimizer.cc's AdamW::Update for one tensor, verbatim in its
// arithmetic (fp32 elementwise, scalars rounded from double).
void ReferenceAdamW(const HostAdamWConfig& config, double lr, int64_t step, bool decay, float* p,
                    const float* g, float* m, float* v, size_t n) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(config.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(config.beta2, t);
  const float decay_factor = static_cast<float>(1.0 - lr * config.weight_decay);
  const float beta1 = static_cast<float>(config.beta1);
  const float beta2 = static_cast<float>(config.beta2);
  const float one_minus_beta1 = static_cast<float>(1.0 - config.beta1);
  const float one_minus_beta2 = static_cast<float>(1.0 - config.beta2);
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  const float eps = static_cast<float>(config.eps);
  if (decay && config.weight_decay != 0) {
    for (size_t j = 0; j < n; ++j) p[j] = p[j] * decay_factor;
  }
  for (size_t j = 0; j < n; ++j) {
    m[j] = m[j] * beta1 + one_minus_beta1 * g[j];
    v[j] = v[j] * beta2 + one_minus_beta2 * g[j] * g[j];
    const float denom = std::sqrt(v[j]) / bias_correction2_sqrt + eps;
    p[j] = p[j] + neg_step_size * (m[j] / denom);
  }
}

int64_t CountBitMismatches(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t mismatches = 0;
  for (size_t i = 0; i < a.size(); ++i) mismatches += FloatBits(a[i]) != FloatBits(b[i]) ? 1 : 0;
  return mismatches;
}

TEST_F(CudaOptimizerTest, AdamWOverManyTensorsMatchesTheCpuOptimizerBitForBit) {
  const HostAdamWConfig config;
  std::mt19937 rng(21);
  const size_t count = kSizes.size();
  // Host state per tensor: p, m, v (m, v nonzero as after earlier steps).
  std::vector<std::vector<float>> p(count), m(count), v(count);
  std::vector<std::unique_ptr<DeviceBuffer<float>>> d_p, d_g, d_m, d_v;
  std::vector<std::unique_ptr<DeviceBuffer<uint16_t>>> d_p_bf16;
  std::vector<cuda::AdamWTensor> tensors(count);
  for (size_t i = 0; i < count; ++i) {
    const size_t n = kSizes[i];
    p[i] = RandomF32(n, &rng, -1.0f, 1.0f);
    m[i] = RandomF32(n, &rng, -0.01f, 0.01f);
    v[i] = RandomF32(n, &rng, 0.0f, 1e-4f);
    d_p.push_back(std::make_unique<DeviceBuffer<float>>(p[i]));
    d_g.push_back(std::make_unique<DeviceBuffer<float>>(n));
    d_m.push_back(std::make_unique<DeviceBuffer<float>>(m[i]));
    d_v.push_back(std::make_unique<DeviceBuffer<float>>(v[i]));
    d_p_bf16.push_back(std::make_unique<DeviceBuffer<uint16_t>>(n));
    tensors[i].param = d_p[i]->get();
    tensors[i].grad = d_g[i]->get();
    tensors[i].exp_avg = d_m[i]->get();
    tensors[i].exp_avg_sq = d_v[i]->get();
    tensors[i].param_bf16 = i % 3 == 1 ? nullptr : d_p_bf16[i]->get();  // Some without a copy.
    tensors[i].n = static_cast<int64_t>(n);
    tensors[i].decay = i % 2 == 0 ? 1 : 0;
  }
  const int64_t total = cuda::AssignOffsets(tensors.data(), static_cast<int>(count));
  DeviceBuffer<cuda::AdamWTensor> d_tensors(tensors);

  const double lrs[] = {1e-3, 3e-4, 2e-3};
  for (int64_t step = 1; step <= 3; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const double lr = lrs[step - 1];
    for (size_t i = 0; i < count; ++i) {
      const std::vector<float> g = RandomF32(kSizes[i], &rng, -0.1f, 0.1f);
      d_g[i]->Upload(g);
      d_p_bf16[i]->Poison();
      ReferenceAdamW(config, lr, step, tensors[i].decay != 0, p[i].data(), g.data(), m[i].data(),
                     v[i].data(), g.size());
    }
    ASSERT_EQ(cuda::AdamWStep(d_tensors.get(), static_cast<int>(count), total,
                              cuda::MakeAdamWScalars(lr, config.beta1, config.beta2, config.eps,
                                                     config.weight_decay, step),
                              nullptr),
              cudaSuccess);
    for (size_t i = 0; i < count; ++i) {
      if (kSizes[i] == 0) continue;
      SCOPED_TRACE(testing::Message() << "tensor " << i << " (" << kSizes[i] << " values)");
      const std::vector<float> p_out = d_p[i]->Download();
      const std::vector<float> m_out = d_m[i]->Download();
      const std::vector<float> v_out = d_v[i]->Download();
      EXPECT_TRUE(Close("adamw param", ToDouble(p_out), ToDouble(p[i]), kF32Tolerance));
      EXPECT_TRUE(Close("adamw exp_avg", ToDouble(m_out), ToDouble(m[i]), kF32Tolerance));
      EXPECT_TRUE(Close("adamw exp_avg_sq", ToDouble(v_out), ToDouble(v[i]), kF32Tolerance));
      // Same fp32 operations in the same order, no fused multiply-adds: the
      // results are identical, not just close.
      EXPECT_EQ(CountBitMismatches(p_out, p[i]), 0);
      EXPECT_EQ(CountBitMismatches(m_out, m[i]), 0);
      EXPECT_EQ(CountBitMismatches(v_out, v[i]), 0);
      if (tensors[i].param_bf16 != nullptr) {
        const std::vector<uint16_t> copy = d_p_bf16[i]->Download();
        int64_t wrong = 0;
        for (size_t j = 0; j < copy.size(); ++j) wrong += copy[j] != FloatToBF16(p[i][j]) ? 1 : 0;
        EXPECT_EQ(wrong, 0) << "bf16 copies that are not the rounded master weight";
      }
    }
  }
}

struct NormTensors {
  std::vector<std::vector<float>> values;
  std::vector<std::unique_ptr<DeviceBuffer<float>>> buffers;
  std::vector<cuda::F32Tensor> tensors;
  int64_t total = 0;
  std::unique_ptr<DeviceBuffer<cuda::F32Tensor>> device;

  explicit NormTensors(uint32_t seed) {
    std::mt19937 rng(seed);
    for (int64_t n : kSizes) {
      values.push_back(RandomF32(n, &rng, -0.05f, 0.05f));
      buffers.push_back(std::make_unique<DeviceBuffer<float>>(values.back()));
      cuda::F32Tensor t;
      t.data = buffers.back()->get();
      t.n = n;
      tensors.push_back(t);
    }
    total = cuda::AssignOffsets(tensors.data(), static_cast<int>(tensors.size()));
    device = std::make_unique<DeviceBuffer<cuda::F32Tensor>>(tensors);
  }
  int count() const { return static_cast<int>(tensors.size()); }
  double HostSumOfSquares() const {
    double sum = 0;
    for (const auto& v : values) {
      for (float x : v) sum += static_cast<double>(x) * static_cast<double>(x);
    }
    return sum;
  }
};

TEST_F(CudaOptimizerTest, SumOfSquaresMatchesTheCpuInF64AndIsDeterministic) {
  NormTensors grads(22);
  DeviceBuffer<double> d_sum(1), d_scratch(cuda::SumOfSquaresScratchSize());
  ASSERT_EQ(cuda::SumOfSquares(grads.device->get(), grads.count(), grads.total, d_sum.get(),
                               d_scratch.get(), nullptr),
            cudaSuccess);
  const double first = d_sum.Download()[0];
  // fp64 accumulation in another order: equal to rounding, far below fp32.
  EXPECT_TRUE(Close("sum of squares", {first}, {grads.HostSumOfSquares()}, 1e-12));
  d_sum.Poison();
  ASSERT_EQ(cuda::SumOfSquares(grads.device->get(), grads.count(), grads.total, d_sum.get(),
                               d_scratch.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(first, d_sum.Download()[0]) << "a second run summed differently";
}

TEST_F(CudaOptimizerTest, ClipByGlobalNormScalesLikeClipGradNormOnlyAboveTheLimit) {
  for (const double limit_ratio : {0.5, 2.0}) {
    SCOPED_TRACE(testing::Message() << "max_norm = " << limit_ratio << " x norm");
    NormTensors grads(23);
    const double norm = std::sqrt(grads.HostSumOfSquares());
    const double max_norm = limit_ratio * norm;
    DeviceBuffer<double> d_sum(1), d_scratch(cuda::SumOfSquaresScratchSize());
    ASSERT_EQ(cuda::SumOfSquares(grads.device->get(), grads.count(), grads.total, d_sum.get(),
                                 d_scratch.get(), nullptr),
              cudaSuccess);
    ASSERT_EQ(cuda::ClipByGlobalNorm(grads.device->get(), grads.count(), grads.total, d_sum.get(),
                                     max_norm, nullptr),
              cudaSuccess);
    const double coef = max_norm / (norm + 1e-6);
    const float scale = coef < 1 ? static_cast<float>(coef) : 1.0f;
    for (size_t i = 0; i < grads.values.size(); ++i) {
      if (grads.values[i].empty()) continue;
      std::vector<double> expected(grads.values[i].size());
      for (size_t j = 0; j < expected.size(); ++j) expected[j] = grads.values[i][j] * scale;
      const std::vector<float> out = grads.buffers[i]->Download();
      EXPECT_TRUE(Close("clipped gradient", ToDouble(out), expected, kF32Tolerance));
      if (coef >= 1) {
        EXPECT_EQ(out, grads.values[i]) << "unclipped gradients must not change";
      }
    }
  }
}

TEST_F(CudaOptimizerTest, ScaleTensorsMultipliesEveryElementInF32) {
  NormTensors grads(24);
  ASSERT_EQ(cuda::ScaleTensors(grads.device->get(), grads.count(), grads.total, 0.3f, nullptr),
            cudaSuccess);
  for (size_t i = 0; i < grads.values.size(); ++i) {
    std::vector<float> expected = grads.values[i];
    for (float& x : expected) x *= 0.3f;
    EXPECT_EQ(grads.buffers[i]->Download(), expected) << "tensor " << i;
  }
}

// Argument checks run before any CUDA call, so these hold without a device.
TEST(CudaOptimizerArgumentsTest, InconsistentCountsAreRejectedBeforeLaunch) {
  const cuda::AdamWScalars scalars = cuda::MakeAdamWScalars(1e-3, 0.9, 0.95, 1e-8, 0.1, 1);
  EXPECT_EQ(cuda::AdamWStep(nullptr, 0, 10, scalars, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::AdamWStep(nullptr, -1, 0, scalars, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::ScaleTensors(nullptr, 0, 5, 1.0f, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::ClipByGlobalNorm(nullptr, 1, 5, nullptr, 1.0, nullptr), cudaErrorInvalidValue);
}

TEST(CudaOptimizerArgumentsTest, AdamWScalarsRoundLikeTheCpuOptimizer) {
  const cuda::AdamWScalars s = cuda::MakeAdamWScalars(1e-3, 0.9, 0.95, 1e-8, 0.1, 3);
  EXPECT_EQ(s.neg_step_size, static_cast<float>(-(1e-3 / (1.0 - std::pow(0.9, 3.0)))));
  EXPECT_EQ(s.bias_correction2_sqrt, static_cast<float>(std::sqrt(1.0 - std::pow(0.95, 3.0))));
  EXPECT_EQ(s.decay_factor, static_cast<float>(1.0 - 1e-3 * 0.1));
  EXPECT_EQ(s.one_minus_beta2, static_cast<float>(1.0 - 0.95));
  EXPECT_EQ(s.apply_decay, 1);
  EXPECT_EQ(cuda::MakeAdamWScalars(1e-3, 0.9, 0.95, 1e-8, 0.0, 1).apply_decay, 0);
}

}  // namespace
}  // namespace llamapro
