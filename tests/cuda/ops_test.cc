// CUDA conformance of the pointwise and row ops (embedding, RMSNorm, RoPE,
// SiLU-gated multiply, cross-entropy, bias, add), forward and backward, against the CPU
// references of kernels/cpu/reference*.h run in double on the same
// bf16-rounded inputs. Outputs are poisoned with NaN before each run, so an
// unwritten element fails. Skipped where no CUDA device is usable.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/reference_backward.h"
#include "kernels/cuda/add.cuh"
#include "kernels/cuda/bias.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "tests/cuda/cuda_test_util.h"

namespace llamapro {
namespace {

using cuda_test::Close;
using cuda_test::DeviceBuffer;
using cuda_test::kBF16Tolerance;
using cuda_test::kF32Tolerance;
using cuda_test::RandomBF16;
using cuda_test::ToDouble;

class CudaOpsTest : public cuda_test::CudaTest {};

std::vector<int32_t> RandomTokens(int64_t n, int32_t vocab, std::mt19937* rng) {
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> tokens(n);
  for (int32_t& t : tokens) t = dist(*rng);
  return tokens;
}

TEST_F(CudaOpsTest, EmbeddingForwardCopiesTheTableRowsExactly) {
  const int64_t v = 50, c = 300, n = 70;
  std::mt19937 rng(11);
  const std::vector<uint16_t> table = RandomBF16(v * c, &rng);
  const std::vector<int32_t> tokens = RandomTokens(n, v, &rng);
  DeviceBuffer<uint16_t> d_table(table);
  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<uint16_t> d_out(n * c);
  ASSERT_EQ(cuda::EmbeddingForward(d_table.get(), d_tokens.get(), d_out.get(), n, c, nullptr),
            cudaSuccess);
  std::vector<uint16_t> ref(n * c);
  ref::Embedding(table.data(), tokens.data(), ref.data(), n, c);
  EXPECT_EQ(d_out.Download(), ref);
}

TEST_F(CudaOpsTest, EmbeddingBackwardAccumulatesRepeatedTokensInF32) {
  const int64_t v = 20, c = 260, n = 150;  // Far more rows than tokens: many repeats.
  std::mt19937 rng(12);
  const std::vector<uint16_t> dx = RandomBF16(n * c, &rng);
  const std::vector<int32_t> tokens = RandomTokens(n, v, &rng);
  const std::vector<float> dtable0 = cuda_test::RandomF32(v * c, &rng, -1.0f, 1.0f);
  DeviceBuffer<uint16_t> d_dx(dx);
  DeviceBuffer<int32_t> d_tokens(tokens);
  DeviceBuffer<float> d_dtable(dtable0);
  ASSERT_EQ(cuda::EmbeddingBackward(d_dx.get(), d_tokens.get(), d_dtable.get(), n, c, nullptr),
            cudaSuccess);
  std::vector<double> ref = ToDouble(dtable0);
  ref::EmbeddingBackward(ToDouble(dx).data(), tokens.data(), ref.data(), n, c);
  EXPECT_TRUE(Close("embedding dtable", ToDouble(d_dtable.Download()), ref, kF32Tolerance, c));
}

struct RowShape {
  int64_t n;
  int64_t c;
};

TEST_F(CudaOpsTest, RmsNormForwardMatchesTheReferenceAndSavesInvRms) {
  for (const RowShape shape : {RowShape{37, 1000}, RowShape{5, 64}, RowShape{3, 4099}}) {
    SCOPED_TRACE(testing::Message() << "n=" << shape.n << " c=" << shape.c);
    const int64_t n = shape.n, c = shape.c;
    const double eps = 1e-5;
    std::mt19937 rng(13 + n);
    const std::vector<uint16_t> x = RandomBF16(n * c, &rng, 2.0f);
    std::vector<uint16_t> w = RandomBF16(c, &rng, 0.5f);
    for (uint16_t& wi : w) wi = FloatToBF16(1.0f + BF16ToFloat(wi));
    DeviceBuffer<uint16_t> d_x(x), d_w(w), d_y(n * c);
    DeviceBuffer<float> d_inv_rms(n);
    ASSERT_EQ(cuda::RmsNormForward(d_x.get(), d_w.get(), d_y.get(), d_inv_rms.get(), n, c,
                                   static_cast<float>(eps), nullptr),
              cudaSuccess);
    std::vector<double> y(n * c), inv_rms(n);
    ref::RmsNormForward(ToDouble(x).data(), ToDouble(w).data(), y.data(), inv_rms.data(), n, c,
                        eps);
    EXPECT_TRUE(Close("rmsnorm y", ToDouble(d_y.Download()), y, kBF16Tolerance, c));
    EXPECT_TRUE(Close("rmsnorm inv_rms", ToDouble(d_inv_rms.Download()), inv_rms, kF32Tolerance));
  }
}

TEST_F(CudaOpsTest, RmsNormForwardInPlaceEqualsOutOfPlace) {
  const int64_t n = 9, c = 777;
  std::mt19937 rng(14);
  const std::vector<uint16_t> x = RandomBF16(n * c, &rng, 2.0f);
  const std::vector<uint16_t> w = RandomBF16(c, &rng);
  DeviceBuffer<uint16_t> d_x(x), d_w(w), d_y(n * c), d_inplace(x);
  DeviceBuffer<float> d_inv_rms(n);
  ASSERT_EQ(
      cuda::RmsNormForward(d_x.get(), d_w.get(), d_y.get(), d_inv_rms.get(), n, c, 1e-6f, nullptr),
      cudaSuccess);
  ASSERT_EQ(cuda::RmsNormForward(d_inplace.get(), d_w.get(), d_inplace.get(), d_inv_rms.get(), n, c,
                                 1e-6f, nullptr),
            cudaSuccess);
  EXPECT_EQ(d_inplace.Download(), d_y.Download());
}

TEST_F(CudaOpsTest, RmsNormBackwardMatchesTheReference) {
  // 200 rows: several 64-row chunks of dw partials, the last one partial.
  for (const RowShape shape : {RowShape{200, 520}, RowShape{1, 64}}) {
    SCOPED_TRACE(testing::Message() << "n=" << shape.n << " c=" << shape.c);
    const int64_t n = shape.n, c = shape.c;
    std::mt19937 rng(15 + n);
    const std::vector<uint16_t> x = RandomBF16(n * c, &rng, 2.0f);
    const std::vector<uint16_t> w = RandomBF16(c, &rng, 1.5f);
    const std::vector<uint16_t> dy = RandomBF16(n * c, &rng);
    const std::vector<float> dw0 = cuda_test::RandomF32(c, &rng, -1.0f, 1.0f);
    std::vector<double> y(n * c), inv_rms(n);
    ref::RmsNormForward(ToDouble(x).data(), ToDouble(w).data(), y.data(), inv_rms.data(), n, c,
                        1e-5);
    DeviceBuffer<uint16_t> d_x(x), d_w(w), d_dy(dy), d_dx(n * c);
    DeviceBuffer<float> d_inv_rms(cuda_test::ToF32(inv_rms)), d_dw(dw0);
    DeviceBuffer<float> d_scratch(cuda::RmsNormBackwardScratchSize(n, c));
    ASSERT_EQ(cuda::RmsNormBackward(d_dy.get(), d_x.get(), d_w.get(), d_inv_rms.get(), d_dx.get(),
                                    d_dw.get(), n, c, d_scratch.get(), nullptr),
              cudaSuccess);
    // The reference reads inv_rms as the device does (fp32).
    const std::vector<double> inv_rms_f32 = ToDouble(cuda_test::ToF32(inv_rms));
    std::vector<double> dx(n * c), dw = ToDouble(dw0);
    ref::RmsNormBackward(ToDouble(dy).data(), ToDouble(x).data(), ToDouble(w).data(),
                         inv_rms_f32.data(), dx.data(), dw.data(), n, c);
    EXPECT_TRUE(Close("rmsnorm dx", ToDouble(d_dx.Download()), dx, kBF16Tolerance, c));
    EXPECT_TRUE(Close("rmsnorm dw", ToDouble(d_dw.Download()), dw, kF32Tolerance));
  }
}

struct RopeCase {
  int64_t batch, seq_len, heads, head_dim;
};

void RopeTablesF32(int64_t seq_len, int64_t head_dim, std::vector<float>* cos_table,
                   std::vector<float>* sin_table) {
  std::vector<float> inv_freq(head_dim / 2);
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / head_dim));
  }
  ref::RopeTables(inv_freq, seq_len, cos_table, sin_table);
}

TEST_F(CudaOpsTest, RopeForwardAndBackwardMatchTheReference) {
  for (const RopeCase rc : {RopeCase{2, 33, 3, 64}, RopeCase{1, 300, 2, 128}}) {
    SCOPED_TRACE(testing::Message() << "T=" << rc.seq_len << " D=" << rc.head_dim);
    std::vector<float> cos_table, sin_table;
    RopeTablesF32(rc.seq_len, rc.head_dim, &cos_table, &sin_table);
    const int64_t n = rc.batch * rc.seq_len * rc.heads * rc.head_dim;
    std::mt19937 rng(16 + rc.seq_len);
    const std::vector<uint16_t> x = RandomBF16(n, &rng, 2.0f);
    DeviceBuffer<float> d_cos(cos_table), d_sin(sin_table);
    DeviceBuffer<uint16_t> d_fwd(x), d_bwd(x);
    ASSERT_EQ(cuda::RopeForward(d_fwd.get(), d_cos.get(), d_sin.get(), rc.batch, rc.seq_len,
                                rc.heads, rc.head_dim, nullptr),
              cudaSuccess);
    ASSERT_EQ(cuda::RopeBackward(d_bwd.get(), d_cos.get(), d_sin.get(), rc.batch, rc.seq_len,
                                 rc.heads, rc.head_dim, nullptr),
              cudaSuccess);
    const std::vector<double> cos_d = ToDouble(cos_table), sin_d = ToDouble(sin_table);
    std::vector<double> fwd = ToDouble(x), bwd = ToDouble(x);
    ref::ApplyRope(fwd.data(), cos_d.data(), sin_d.data(), rc.batch, rc.seq_len, rc.heads,
                   rc.head_dim);
    ref::ApplyRopeBackward(bwd.data(), cos_d.data(), sin_d.data(), rc.batch, rc.seq_len, rc.heads,
                           rc.head_dim);
    EXPECT_TRUE(
        Close("rope forward", ToDouble(d_fwd.Download()), fwd, kBF16Tolerance, rc.head_dim));
    EXPECT_TRUE(
        Close("rope backward", ToDouble(d_bwd.Download()), bwd, kBF16Tolerance, rc.head_dim));
  }
}

TEST_F(CudaOpsTest, SiluMulForwardAndBackwardMatchTheReference) {
  const int64_t n = 100003;
  std::mt19937 rng(17);
  const std::vector<uint16_t> gate = RandomBF16(n, &rng, 6.0f);
  const std::vector<uint16_t> up = RandomBF16(n, &rng, 2.0f);
  const std::vector<uint16_t> dout = RandomBF16(n, &rng);
  DeviceBuffer<uint16_t> d_gate(gate), d_up(up), d_dout(dout), d_out(n), d_dgate(n), d_dup(n);
  ASSERT_EQ(cuda::SiluMulForward(d_gate.get(), d_up.get(), d_out.get(), n, nullptr), cudaSuccess);
  ASSERT_EQ(cuda::SiluMulBackward(d_gate.get(), d_up.get(), d_dout.get(), d_dgate.get(),
                                  d_dup.get(), n, nullptr),
            cudaSuccess);
  std::vector<double> out(n), dgate(n), dup(n);
  const std::vector<double> gate_d = ToDouble(gate), up_d = ToDouble(up);
  ref::SiluMul(gate_d.data(), up_d.data(), out.data(), n);
  ref::SiluMulBackward(gate_d.data(), up_d.data(), ToDouble(dout).data(), dgate.data(), dup.data(),
                       n);
  EXPECT_TRUE(Close("silu_mul out", ToDouble(d_out.Download()), out, kBF16Tolerance));
  EXPECT_TRUE(Close("silu_mul dgate", ToDouble(d_dgate.Download()), dgate, kBF16Tolerance));
  EXPECT_TRUE(Close("silu_mul dup", ToDouble(d_dup.Download()), dup, kBF16Tolerance));

  // In place (dgate over gate, dup over up), as the backward may run: the
  // same values.
  const std::vector<uint16_t> dgate_out = d_dgate.Download(), dup_out = d_dup.Download();
  ASSERT_EQ(cuda::SiluMulBackward(d_gate.get(), d_up.get(), d_dout.get(), d_gate.get(), d_up.get(),
                                  n, nullptr),
            cudaSuccess);
  EXPECT_EQ(d_gate.Download(), dgate_out);
  EXPECT_EQ(d_up.Download(), dup_out);
}

struct CrossEntropyCase {
  int64_t n, v;
  bool with_mask;
};

TEST_F(CudaOpsTest, CrossEntropyLossAndInPlaceGradientMatchTheReference) {
  for (const CrossEntropyCase cc :
       {CrossEntropyCase{19, 1000, true}, CrossEntropyCase{3, 32000, false},
        CrossEntropyCase{4, 300, true}}) {
    SCOPED_TRACE(testing::Message() << "n=" << cc.n << " V=" << cc.v << " mask=" << cc.with_mask);
    const int64_t n = cc.n, v = cc.v;
    std::mt19937 rng(18 + n);
    const std::vector<uint16_t> logits = RandomBF16(n * v, &rng, 8.0f);
    const std::vector<int32_t> targets = RandomTokens(n, static_cast<int32_t>(v), &rng);
    std::vector<uint8_t> mask(n, 1);
    if (cc.with_mask) {
      for (int64_t r = 0; r < n; r += 3) mask[r] = 0;
    }
    const float scale = 1.0f / static_cast<float>(n);
    DeviceBuffer<uint16_t> d_logits(logits);
    DeviceBuffer<int32_t> d_targets(targets);
    DeviceBuffer<uint8_t> d_mask(mask);
    DeviceBuffer<float> d_loss(n);
    ASSERT_EQ(cuda::CrossEntropyForwardBackward(d_logits.get(), d_targets.get(),
                                                cc.with_mask ? d_mask.get() : nullptr, scale,
                                                d_loss.get(), n, v, nullptr),
              cudaSuccess);
    const std::vector<double> logits_d = ToDouble(logits);
    std::vector<double> loss(n), dlogits(n * v);
    for (int64_t r = 0; r < n; ++r) {  // Row by row, for per-row losses.
      loss[r] = ref::CrossEntropy(logits_d.data() + r * v, targets.data() + r,
                                  cc.with_mask ? mask.data() + r : nullptr, dlogits.data() + r * v,
                                  int64_t{1}, v, double{scale});
    }
    EXPECT_TRUE(Close("cross-entropy loss", ToDouble(d_loss.Download()), loss, kF32Tolerance));
    EXPECT_TRUE(
        Close("cross-entropy dlogits", ToDouble(d_logits.Download()), dlogits, kBF16Tolerance, v));
  }
}

TEST_F(CudaOpsTest, BiasForwardSetsOrAddsTheBiasToEveryRow) {
  const int64_t n = 37, c = 300;
  std::mt19937 rng(19);
  const std::vector<uint16_t> y = RandomBF16(n * c, &rng);
  const std::vector<uint16_t> bias = RandomBF16(c, &rng);
  DeviceBuffer<uint16_t> d_bias(bias);
  DeviceBuffer<uint16_t> d_y(n * c);  // Poisoned: overwrite must write every element.
  ASSERT_EQ(cuda::BiasForward(d_bias.get(), d_y.get(), n, c, /*accumulate=*/false, nullptr),
            cudaSuccess);
  std::vector<uint16_t> set(n * c), added(n * c);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < c; ++i) {
      set[r * c + i] = bias[i];
      added[r * c + i] = FloatToBF16(BF16ToFloat(y[r * c + i]) + BF16ToFloat(bias[i]));
    }
  }
  EXPECT_EQ(d_y.Download(), set);
  d_y.Upload(y);
  ASSERT_EQ(cuda::BiasForward(d_bias.get(), d_y.get(), n, c, /*accumulate=*/true, nullptr),
            cudaSuccess);
  EXPECT_EQ(d_y.Download(), added);  // One fp32 addition, rounded as on the CPU.
}

TEST_F(CudaOpsTest, BiasBackwardAccumulatesColumnSumsDeterministically) {
  const int64_t n = 333, c = 270;  // Several row chunks, a partial column block.
  std::mt19937 rng(20);
  const std::vector<uint16_t> dy = RandomBF16(n * c, &rng);
  const std::vector<float> initial = cuda_test::RandomF32(c, &rng, -1.0f, 1.0f);
  DeviceBuffer<uint16_t> d_dy(dy);
  DeviceBuffer<float> d_db(initial);
  DeviceBuffer<float> d_scratch(cuda::BiasBackwardScratchSize(n, c));
  ASSERT_EQ(cuda::BiasBackward(d_dy.get(), d_db.get(), n, c, d_scratch.get(), nullptr),
            cudaSuccess);
  std::vector<double> ref(c);
  for (int64_t i = 0; i < c; ++i) {
    double sum = 0;
    for (int64_t r = 0; r < n; ++r) sum += BF16ToFloat(dy[r * c + i]);
    ref[i] = initial[i] + sum;
  }
  const std::vector<float> first = d_db.Download();
  EXPECT_TRUE(Close("bias backward", ToDouble(first), ref, kF32Tolerance));
  d_db.Upload(initial);
  ASSERT_EQ(cuda::BiasBackward(d_dy.get(), d_db.get(), n, c, d_scratch.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(d_db.Download(), first);  // Bit for bit, run to run.
}

TEST_F(CudaOpsTest, AddRoundsTheF32SumInPlace) {
  const int64_t n = 100003;
  std::mt19937 rng(21);
  const std::vector<uint16_t> a = RandomBF16(n, &rng);
  const std::vector<uint16_t> b = RandomBF16(n, &rng);
  std::vector<uint16_t> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i] = FloatToBF16(BF16ToFloat(a[i]) + BF16ToFloat(b[i]));
  DeviceBuffer<uint16_t> d_a(a);
  DeviceBuffer<uint16_t> d_b(b);
  DeviceBuffer<uint16_t> d_out(n);
  ASSERT_EQ(cuda::Add(d_a.get(), d_b.get(), d_out.get(), n, nullptr), cudaSuccess);
  EXPECT_EQ(d_out.Download(), ref);
  ASSERT_EQ(cuda::Add(d_a.get(), d_b.get(), d_a.get(), n, nullptr), cudaSuccess);  // out == a.
  EXPECT_EQ(d_a.Download(), ref);
}

// Argument checks run before any CUDA call, so these hold without a device.
TEST(CudaOpsArgumentsTest, InvalidSizesAreRejectedBeforeLaunch) {
  EXPECT_EQ(cuda::EmbeddingForward(nullptr, nullptr, nullptr, -1, 4, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::RmsNormForward(nullptr, nullptr, nullptr, nullptr, 4, 0, 1e-5f, nullptr),
            cudaErrorInvalidValue);
  float dw = 0;
  EXPECT_EQ(cuda::RmsNormBackward(nullptr, nullptr, nullptr, nullptr, nullptr, &dw, 4, 8, nullptr,
                                  nullptr),
            cudaErrorInvalidValue);  // dw without scratch.
  EXPECT_EQ(cuda::RopeForward(nullptr, nullptr, nullptr, 1, 1, 1, 7, nullptr),
            cudaErrorInvalidValue);  // Odd head size.
  EXPECT_EQ(cuda::SiluMulForward(nullptr, nullptr, nullptr, -3, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(
      cuda::CrossEntropyForwardBackward(nullptr, nullptr, nullptr, 1.0f, nullptr, 2, 0, nullptr),
      cudaErrorInvalidValue);
  uint16_t bias = 0;
  EXPECT_EQ(cuda::BiasForward(&bias, nullptr, 4, 0, false, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::BiasForward(nullptr, nullptr, 4, 8, true, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::BiasBackward(nullptr, &dw, 4, 8, nullptr, nullptr),
            cudaErrorInvalidValue);  // No scratch.
  EXPECT_EQ(cuda::BiasBackward(nullptr, &dw, -1, 8, &dw, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::Add(nullptr, nullptr, nullptr, -1, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace llamapro
