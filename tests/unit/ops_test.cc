// The fast fp32 CPU ops against their double-precision references.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"

namespace llamapro {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Max |a - b| relative to max |b|.
double RelativeError(const std::vector<float>& actual, const std::vector<double>& expected) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(actual[i] - expected[i]));
    max_ref = std::max(max_ref, std::abs(expected[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

TEST(OpsTest, LinearMatchesReferenceWithAndWithoutBias) {
  const int64_t n = 7, in = 33, out = 19;
  auto x = Random(n * in, 1), w = Random(out * in, 2), b = Random(out, 3);
  for (bool with_bias : {false, true}) {
    std::vector<float> y(n * out);
    std::vector<double> y_ref(n * out);
    cpu::Linear(x.data(), w.data(), with_bias ? b.data() : nullptr, y.data(), n, in, out);
    auto xd = ToDouble(x), wd = ToDouble(w), bd = ToDouble(b);
    ref::Linear(xd.data(), wd.data(), with_bias ? bd.data() : nullptr, y_ref.data(), n, in, out);
    EXPECT_LT(RelativeError(y, y_ref), 1e-6) << "bias " << with_bias;
  }
}

TEST(OpsTest, RmsNormMatchesReferenceAndMayRunInPlace) {
  const int64_t n = 5, c = 41;
  auto x = Random(n * c, 4), w = Random(c, 5);
  std::vector<double> y_ref(n * c);
  auto xd = ToDouble(x), wd = ToDouble(w);
  ref::RmsNorm(xd.data(), wd.data(), y_ref.data(), n, c, 1e-5);
  cpu::RmsNorm(x.data(), w.data(), x.data(), n, c, 1e-5f);
  EXPECT_LT(RelativeError(x, y_ref), 1e-6);
}

TEST(OpsTest, RopeMatchesReferenceInRotateHalfConvention) {
  const int64_t b = 2, t = 6, h = 3, d = 8;
  std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f, 0.001f};
  std::vector<float> cos_f, sin_f;
  ref::RopeTables(inv_freq, t, &cos_f, &sin_f);
  auto x = Random(b * t * h * d, 6);
  auto xd = ToDouble(x);
  std::vector<double> cos_d(cos_f.begin(), cos_f.end()), sin_d(sin_f.begin(), sin_f.end());
  ref::ApplyRope(xd.data(), cos_d.data(), sin_d.data(), b, t, h, d);
  std::vector<float> x0 = x;
  cpu::ApplyRope(x.data(), cos_f.data(), sin_f.data(), b, t, h, d);
  EXPECT_LT(RelativeError(x, xd), 1e-6);
  // Position 0 is the identity; position 1 rotates pair (0, 4) by inv_freq[0] = 1 rad.
  EXPECT_EQ(x[0], x0[0]);
  const int64_t p1 = 1 * h * d;  // b=0, t=1, h=0
  EXPECT_NEAR(x[p1], x0[p1] * std::cos(1.0f) - x0[p1 + 4] * std::sin(1.0f), 1e-6);
  EXPECT_NEAR(x[p1 + 4], x0[p1 + 4] * std::cos(1.0f) + x0[p1] * std::sin(1.0f), 1e-6);
}

TEST(OpsTest, SiluMulMatchesReference) {
  auto g = Random(100, 7, 3.0f), u = Random(100, 8);
  std::vector<float> out(100);
  std::vector<double> out_ref(100);
  auto gd = ToDouble(g), ud = ToDouble(u);
  ref::SiluMul(gd.data(), ud.data(), out_ref.data(), 100);
  cpu::SiluMul(g.data(), u.data(), out.data(), 100);
  EXPECT_LT(RelativeError(out, out_ref), 1e-6);
}

struct AttentionCase {
  int64_t batch, seq_len, heads, kv_heads, head_dim, window;
};

void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << "B" << c.batch << " T" << c.seq_len << " H" << c.heads << " Hkv" << c.kv_heads << " D"
      << c.head_dim << " window " << c.window;
}

class AttentionTest : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(AttentionTest, MatchesReference) {
  const AttentionCase c = GetParam();
  auto q = Random(c.batch * c.seq_len * c.heads * c.head_dim, 9);
  auto k = Random(c.batch * c.seq_len * c.kv_heads * c.head_dim, 10);
  auto v = Random(c.batch * c.seq_len * c.kv_heads * c.head_dim, 11);
  std::vector<float> out(q.size());
  std::vector<double> out_ref(q.size());
  std::vector<float> scratch(cpu::AttentionScratchSize(c.seq_len));
  cpu::Attention(q.data(), k.data(), v.data(), out.data(), c.batch, c.seq_len, c.heads, c.kv_heads,
                 c.head_dim, c.window, scratch.data());
  auto qd = ToDouble(q), kd = ToDouble(k), vd = ToDouble(v);
  ref::Attention(qd.data(), kd.data(), vd.data(), out_ref.data(), c.batch, c.seq_len, c.heads,
                 c.kv_heads, c.head_dim, c.window);
  EXPECT_LT(RelativeError(out, out_ref), 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttentionCase{1, 1, 1, 1, 4, 0},
                                           AttentionCase{2, 9, 4, 4, 8, 0},   // MHA
                                           AttentionCase{2, 9, 6, 2, 6, 0},   // GQA
                                           AttentionCase{1, 13, 4, 1, 8, 4},  // MQA + window
                                           AttentionCase{3, 7, 2, 2, 2, 1}));

TEST(OpsTest, AttentionIsCausal) {
  // Changing the last key/value must not change any earlier output.
  const int64_t t = 6, d = 4;
  auto q = Random(t * d, 12), k = Random(t * d, 13), v = Random(t * d, 14);
  std::vector<float> scratch(cpu::AttentionScratchSize(t)), a(t * d), b(t * d);
  cpu::Attention(q.data(), k.data(), v.data(), a.data(), 1, t, 1, 1, d, 0, scratch.data());
  for (int64_t i = 0; i < d; ++i) {
    k[(t - 1) * d + i] += 5.0f;
    v[(t - 1) * d + i] -= 3.0f;
  }
  cpu::Attention(q.data(), k.data(), v.data(), b.data(), 1, t, 1, 1, d, 0, scratch.data());
  for (int64_t i = 0; i < (t - 1) * d; ++i) EXPECT_EQ(a[i], b[i]) << i;
  EXPECT_NE(a[(t - 1) * d], b[(t - 1) * d]);
}

TEST(OpsTest, LogSoftmaxMatchesReferenceAndNormalises) {
  auto x = Random(3 * 50, 15, 4.0f);
  auto xd = ToDouble(x);
  ref::LogSoftmax(xd.data(), 3, 50);
  cpu::LogSoftmax(x.data(), 3, 50);
  EXPECT_LT(RelativeError(x, xd), 1e-6);
  double total = 0;
  for (int i = 0; i < 50; ++i) total += std::exp(static_cast<double>(x[i]));
  EXPECT_NEAR(total, 1.0, 1e-6);
}

TEST(OpsTest, EmbeddingGathersRows) {
  std::vector<float> table = {0, 1, 10, 11, 20, 21};
  std::vector<int32_t> tokens = {2, 0, 2};
  std::vector<float> out(6);
  cpu::Embedding(table.data(), tokens.data(), out.data(), 3, 2);
  EXPECT_EQ(out, (std::vector<float>{20, 21, 0, 1, 20, 21}));
}

}  // namespace
}  // namespace llamapro
