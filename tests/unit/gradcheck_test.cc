// Finite-difference checks, in double, of every reference backward
// (kernels/cpu/reference_backward.h) against its reference forward: for a
// random cotangent dy and the scalar L = sum(dy * f(inputs)), the analytic
// gradient of L with respect to every input and weight must match the central
// difference (L(p + h) - L(p - h)) / 2h element by element.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/reference_backward.h"

namespace llamapro {
namespace {

using Vec = std::vector<double>;

// Central differences with h = 1e-5 in double are accurate to ~1e-10 relative
// for these smooth functions, so a wrong term in a backward (typically O(1)
// relative) cannot hide under this bound.
constexpr double kTolerance = 1e-7;

Vec Random(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

double Dot(const Vec& a, const Vec& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

// Compares `analytic` with the central difference of `objective` with respect
// to each element of *param (perturbed in place and restored). Fails the test
// if the largest difference exceeds kTolerance times the largest numeric
// derivative, or if the numeric gradient is zero (a check that proves nothing).
void ExpectGradientMatches(const char* name, Vec* param, const Vec& analytic,
                           const std::function<double()>& objective) {
  ASSERT_EQ(param->size(), analytic.size()) << name;
  constexpr double kStep = 1e-5;
  double max_diff = 0, max_numeric = 0;
  for (size_t i = 0; i < param->size(); ++i) {
    const double saved = (*param)[i];
    (*param)[i] = saved + kStep;
    const double plus = objective();
    (*param)[i] = saved - kStep;
    const double minus = objective();
    (*param)[i] = saved;
    const double numeric = (plus - minus) / (2 * kStep);
    max_diff = std::max(max_diff, std::abs(numeric - analytic[i]));
    max_numeric = std::max(max_numeric, std::abs(numeric));
  }
  EXPECT_GT(max_numeric, 1e-3) << name << ": gradient vanishes, the check proves nothing";
  EXPECT_LT(max_diff, kTolerance * max_numeric)
      << name << ": max |analytic - numeric| " << max_diff << ", max |numeric| " << max_numeric;
}

TEST(GradCheckTest, RmsNormBackwardMatchesFiniteDifferences) {
  const int64_t n = 3, c = 7;
  const double eps = 1e-5;
  Vec x = Random(n * c, 1), w = Random(c, 2), dy = Random(n * c, 3);
  auto objective = [&] {
    Vec y(n * c), inv_rms(n);
    ref::RmsNormForward(x.data(), w.data(), y.data(), inv_rms.data(), n, c, eps);
    return Dot(dy, y);
  };
  Vec y(n * c), inv_rms(n), dx(n * c), dw(c, 0.0);
  ref::RmsNormForward(x.data(), w.data(), y.data(), inv_rms.data(), n, c, eps);
  ref::RmsNormBackward(dy.data(), x.data(), w.data(), inv_rms.data(), dx.data(), dw.data(), n, c);
  ExpectGradientMatches("dx", &x, dx, objective);
  ExpectGradientMatches("dw", &w, dw, objective);
}

TEST(GradCheckTest, RmsNormForwardMatchesRmsNormAndStoresInverseRms) {
  const int64_t n = 3, c = 5;
  Vec x = Random(n * c, 4), w = Random(c, 5);
  Vec y(n * c), y_plain(n * c), inv_rms(n);
  ref::RmsNormForward(x.data(), w.data(), y.data(), inv_rms.data(), n, c, 1e-5);
  ref::RmsNorm(x.data(), w.data(), y_plain.data(), n, c, 1e-5);
  EXPECT_EQ(y, y_plain);
  for (int64_t r = 0; r < n; ++r) {
    double sum_sq = 0;
    for (int64_t i = 0; i < c; ++i) sum_sq += x[r * c + i] * x[r * c + i];
    EXPECT_NEAR(inv_rms[r], 1.0 / std::sqrt(sum_sq / c + 1e-5), 1e-12) << r;
  }
}

TEST(GradCheckTest, LinearBackwardWithBiasMatchesFiniteDifferences) {
  const int64_t n = 4, in = 5, out = 3;
  Vec x = Random(n * in, 6), w = Random(out * in, 7), b = Random(out, 8), dy = Random(n * out, 9);
  auto objective = [&] {
    Vec y(n * out);
    ref::Linear(x.data(), w.data(), b.data(), y.data(), n, in, out);
    return Dot(dy, y);
  };
  Vec dx(n * in), dw(out * in, 0.0), db(out, 0.0);
  ref::LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), n, in, out);
  ExpectGradientMatches("dx", &x, dx, objective);
  ExpectGradientMatches("dw", &w, dw, objective);
  ExpectGradientMatches("db", &b, db, objective);
}

TEST(GradCheckTest, RopeBackwardMatchesFiniteDifferences) {
  const int64_t batch = 2, seq_len = 3, heads = 2, head_dim = 6;
  Vec cos_table, sin_table;
  ref::RopeTables(Vec{1.0, 0.3, 0.05}, seq_len, &cos_table, &sin_table);
  Vec x = Random(batch * seq_len * heads * head_dim, 10);
  Vec dy = Random(x.size(), 11);
  auto objective = [&] {
    Vec y = x;
    ref::ApplyRope(y.data(), cos_table.data(), sin_table.data(), batch, seq_len, heads, head_dim);
    return Dot(dy, y);
  };
  Vec dx = dy;
  ref::ApplyRopeBackward(dx.data(), cos_table.data(), sin_table.data(), batch, seq_len, heads,
                         head_dim);
  ExpectGradientMatches("dx", &x, dx, objective);
}

TEST(GradCheckTest, SiluMulBackwardMatchesFiniteDifferences) {
  const int64_t n = 23;
  Vec gate = Random(n, 12, 3.0), up = Random(n, 13), dy = Random(n, 14);
  auto objective = [&] {
    Vec y(n);
    ref::SiluMul(gate.data(), up.data(), y.data(), n);
    return Dot(dy, y);
  };
  Vec dgate(n), dup(n);
  ref::SiluMulBackward(gate.data(), up.data(), dy.data(), dgate.data(), dup.data(), n);
  ExpectGradientMatches("dgate", &gate, dgate, objective);
  ExpectGradientMatches("dup", &up, dup, objective);
}

TEST(GradCheckTest, EmbeddingBackwardWithRepeatedTokensMatchesFiniteDifferences) {
  const int64_t vocab = 5, c = 4;
  const std::vector<int32_t> tokens = {3, 1, 3, 0, 3};
  const auto n = static_cast<int64_t>(tokens.size());
  Vec table = Random(vocab * c, 15), dy = Random(n * c, 16);
  auto objective = [&] {
    Vec y(n * c);
    ref::Embedding(table.data(), tokens.data(), y.data(), n, c);
    return Dot(dy, y);
  };
  Vec dtable(vocab * c, 0.0);
  ref::EmbeddingBackward(dy.data(), tokens.data(), dtable.data(), n, c);
  ExpectGradientMatches("dtable", &table, dtable, objective);
  // Token 2 never occurs: its row gets no gradient.
  for (int64_t i = 0; i < c; ++i) EXPECT_EQ(dtable[2 * c + i], 0.0);
}

struct AttentionCase {
  int64_t batch, seq_len, heads, kv_heads, head_dim, window;
};

void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << "B" << c.batch << " T" << c.seq_len << " H" << c.heads << " Hkv" << c.kv_heads << " D"
      << c.head_dim << " window " << c.window;
}

class AttentionGradCheckTest : public ::testing::TestWithParam<AttentionCase> {};

TEST_P(AttentionGradCheckTest, BackwardMatchesFiniteDifferences) {
  const AttentionCase c = GetParam();
  const int64_t q_size = c.batch * c.seq_len * c.heads * c.head_dim;
  const int64_t kv_size = c.batch * c.seq_len * c.kv_heads * c.head_dim;
  Vec q = Random(q_size, 17), k = Random(kv_size, 18), v = Random(kv_size, 19);
  Vec dy = Random(q_size, 20);
  auto objective = [&] {
    Vec out(q_size);
    ref::Attention(q.data(), k.data(), v.data(), out.data(), c.batch, c.seq_len, c.heads,
                   c.kv_heads, c.head_dim, c.window);
    return Dot(dy, out);
  };
  Vec out(q_size), lse(c.batch * c.heads * c.seq_len);
  ref::AttentionForward(q.data(), k.data(), v.data(), out.data(), lse.data(), c.batch, c.seq_len,
                        c.heads, c.kv_heads, c.head_dim, c.window);
  // Garbage in the outputs: all three are overwritten.
  Vec dq(q_size, 7.0), dk(kv_size, 7.0), dv(kv_size, 7.0);
  ref::AttentionBackward(q.data(), k.data(), v.data(), out.data(), lse.data(), dy.data(), dq.data(),
                         dk.data(), dv.data(), c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim,
                         c.window);
  ExpectGradientMatches("dv", &v, dv, objective);
  if (c.seq_len > 1 && c.window != 1) {
    ExpectGradientMatches("dq", &q, dq, objective);
    ExpectGradientMatches("dk", &k, dk, objective);
  } else {
    // Each query sees one key: out_t = v_t whatever q and k are.
    for (double g : dq) EXPECT_EQ(g, 0.0);
    for (double g : dk) EXPECT_EQ(g, 0.0);
  }
}

TEST_P(AttentionGradCheckTest, ForwardMatchesAttentionAndStoresLogSumExp) {
  const AttentionCase c = GetParam();
  const int64_t q_size = c.batch * c.seq_len * c.heads * c.head_dim;
  const int64_t kv_size = c.batch * c.seq_len * c.kv_heads * c.head_dim;
  Vec q = Random(q_size, 21), k = Random(kv_size, 22), v = Random(kv_size, 23);
  Vec out(q_size), out_plain(q_size), lse(c.batch * c.heads * c.seq_len);
  ref::AttentionForward(q.data(), k.data(), v.data(), out.data(), lse.data(), c.batch, c.seq_len,
                        c.heads, c.kv_heads, c.head_dim, c.window);
  ref::Attention(q.data(), k.data(), v.data(), out_plain.data(), c.batch, c.seq_len, c.heads,
                 c.kv_heads, c.head_dim, c.window);
  EXPECT_EQ(out, out_plain);
  // lse from its definition, for the last query of batch 0, head heads - 1.
  const int64_t t = c.seq_len - 1, h = c.heads - 1, kvh = h / (c.heads / c.kv_heads);
  const int64_t first = c.window > 0 ? std::max<int64_t>(0, t - c.window + 1) : 0;
  double sum = 0;
  for (int64_t j = first; j <= t; ++j) {
    double dot = 0;
    for (int64_t d = 0; d < c.head_dim; ++d) {
      dot += q[(t * c.heads + h) * c.head_dim + d] * k[(j * c.kv_heads + kvh) * c.head_dim + d];
    }
    sum += std::exp(dot / std::sqrt(static_cast<double>(c.head_dim)));
  }
  EXPECT_NEAR(lse[h * c.seq_len + t], std::log(sum), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionGradCheckTest,
                         ::testing::Values(AttentionCase{1, 1, 2, 1, 3, 0},    // T = 1
                                           AttentionCase{2, 5, 2, 2, 4, 0},    // MHA, causal
                                           AttentionCase{2, 5, 4, 2, 3, 0},    // GQA
                                           AttentionCase{1, 7, 3, 1, 4, 3},    // MQA + window
                                           AttentionCase{1, 6, 4, 2, 2, 1}));  // window 1

TEST(GradCheckTest, CrossEntropyWithPartialMaskMatchesFiniteDifferences) {
  const int64_t n = 5, v = 7;
  const double scale = 0.37;
  Vec logits = Random(n * v, 24, 2.0);
  const std::vector<int32_t> targets = {2, 0, 6, 2, 4};
  const std::vector<uint8_t> mask = {1, 0, 1, 1, 0};
  auto objective = [&] {
    return scale * ref::CrossEntropy<double>(logits.data(), targets.data(), mask.data(), nullptr, n,
                                             v, scale);
  };
  Vec dlogits(n * v, 7.0);
  const double loss =
      ref::CrossEntropy(logits.data(), targets.data(), mask.data(), dlogits.data(), n, v, scale);
  ExpectGradientMatches("dlogits", &logits, dlogits, objective);
  // The loss is -sum of the masked rows' target log-probabilities.
  Vec log_probs = logits;
  ref::LogSoftmax(log_probs.data(), n, v);
  EXPECT_NEAR(loss, -(log_probs[0 * v + 2] + log_probs[2 * v + 6] + log_probs[3 * v + 2]), 1e-12);
  for (int64_t i = 0; i < v; ++i) {
    EXPECT_EQ(dlogits[1 * v + i], 0.0);
    EXPECT_EQ(dlogits[4 * v + i], 0.0);
  }
}

TEST(GradCheckTest, LmHeadCrossEntropyMatchesFiniteDifferences) {
  const int64_t n = 5, c = 4, v = 6;
  const double scale = 0.5;
  Vec x = Random(n * c, 25), w = Random(v * c, 26);
  const std::vector<int32_t> targets = {5, 1, 0, 3, 3};
  const std::vector<uint8_t> mask = {1, 1, 0, 1, 1};
  auto objective = [&] {
    return scale * ref::LmHeadCrossEntropy<double>(x.data(), w.data(), targets.data(), mask.data(),
                                                   scale, nullptr, nullptr, n, c, v);
  };
  Vec dx(n * c, 7.0), dw(v * c, 0.0);
  ref::LmHeadCrossEntropy(x.data(), w.data(), targets.data(), mask.data(), scale, dx.data(),
                          dw.data(), n, c, v);
  ExpectGradientMatches("dx", &x, dx, objective);
  ExpectGradientMatches("dw", &w, dw, objective);
  for (int64_t i = 0; i < c; ++i) EXPECT_EQ(dx[2 * c + i], 0.0);
}

}  // namespace
}  // namespace llamapro
