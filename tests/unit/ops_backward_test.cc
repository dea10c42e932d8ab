// The fast fp32 training ops (kernels/cpu/ops.h, training section) against
// their double-precision references (kernels/cpu/reference_backward.h), on
// random inputs with odd sizes; plus the overwrite / accumulate / nullptr
// conventions of the header.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"
#include "kernels/cpu/reference_backward.h"

namespace llamapro {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// fp32 against double: a few ulps per accumulated term, relative to the
// largest reference value.
constexpr double kTolerance = 1e-5;

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Max |a - b| relative to max |b|; NaN anywhere in `actual` gives infinity.
double RelativeError(const std::vector<float>& actual, const std::vector<double>& expected) {
  if (actual.size() != expected.size()) return std::numeric_limits<double>::infinity();
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::isnan(actual[i])) return std::numeric_limits<double>::infinity();
    max_diff = std::max(max_diff, std::abs(actual[i] - expected[i]));
    max_ref = std::max(max_ref, std::abs(expected[i]));
  }
  return max_diff / std::max(max_ref, 1e-30);
}

TEST(OpsBackwardTest, RmsNormForwardMatchesRmsNormBitForBitAndReference) {
  const int64_t n = 5, c = 41;
  auto x = Random(n * c, 1), w = Random(c, 2);
  std::vector<float> y(n * c), y_plain(n * c), inv_rms(n);
  cpu::RmsNormForward(x.data(), w.data(), y.data(), inv_rms.data(), n, c, 1e-5f);
  cpu::RmsNorm(x.data(), w.data(), y_plain.data(), n, c, 1e-5f);
  EXPECT_EQ(y, y_plain);
  auto xd = ToDouble(x), wd = ToDouble(w);
  std::vector<double> y_ref(n * c), inv_rms_ref(n);
  ref::RmsNormForward(xd.data(), wd.data(), y_ref.data(), inv_rms_ref.data(), n, c, 1e-5);
  EXPECT_LT(RelativeError(y, y_ref), 1e-6);
  EXPECT_LT(RelativeError(inv_rms, inv_rms_ref), 1e-6);
}

TEST(OpsBackwardTest, RmsNormBackwardMatchesReferenceAndAccumulatesDw) {
  const int64_t n = 7, c = 37;
  auto x = Random(n * c, 3), w = Random(c, 4), dy = Random(n * c, 5), dw0 = Random(c, 6);
  std::vector<float> y(n * c), inv_rms(n), dx(n * c, kNaN), dw = dw0;
  cpu::RmsNormForward(x.data(), w.data(), y.data(), inv_rms.data(), n, c, 1e-5f);
  cpu::RmsNormBackward(dy.data(), x.data(), w.data(), inv_rms.data(), dx.data(), dw.data(), n, c);
  auto xd = ToDouble(x), wd = ToDouble(w), dyd = ToDouble(dy), dw_ref = ToDouble(dw0);
  std::vector<double> y_ref(n * c), inv_rms_ref(n), dx_ref(n * c);
  ref::RmsNormForward(xd.data(), wd.data(), y_ref.data(), inv_rms_ref.data(), n, c, 1e-5);
  ref::RmsNormBackward(dyd.data(), xd.data(), wd.data(), inv_rms_ref.data(), dx_ref.data(),
                       dw_ref.data(), n, c);
  EXPECT_LT(RelativeError(dx, dx_ref), kTolerance);
  EXPECT_LT(RelativeError(dw, dw_ref), kTolerance);
}

TEST(OpsBackwardTest, RmsNormBackwardSkipsNullOutputs) {
  const int64_t n = 4, c = 19;
  auto x = Random(n * c, 7), w = Random(c, 8), dy = Random(n * c, 9);
  std::vector<float> y(n * c), inv_rms(n);
  cpu::RmsNormForward(x.data(), w.data(), y.data(), inv_rms.data(), n, c, 1e-5f);
  std::vector<float> dx_both(n * c), dw_both(c, 0.0f), dx_only(n * c), dw_only(c, 0.0f);
  cpu::RmsNormBackward(dy.data(), x.data(), w.data(), inv_rms.data(), dx_both.data(),
                       dw_both.data(), n, c);
  cpu::RmsNormBackward(dy.data(), x.data(), w.data(), inv_rms.data(), dx_only.data(), nullptr, n,
                       c);
  cpu::RmsNormBackward(dy.data(), x.data(), w.data(), inv_rms.data(), nullptr, dw_only.data(), n,
                       c);
  EXPECT_EQ(dx_only, dx_both);
  EXPECT_EQ(dw_only, dw_both);
}

TEST(OpsBackwardTest, LinearBackwardMatchesReferenceAndAccumulatesWeightGradients) {
  const int64_t n = 13, in = 37, out = 19;
  auto x = Random(n * in, 10), w = Random(out * in, 11), dy = Random(n * out, 12);
  auto dw0 = Random(out * in, 13), db0 = Random(out, 14);
  std::vector<float> dx(n * in, kNaN), dw = dw0, db = db0;
  cpu::LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), n, in, out);
  auto xd = ToDouble(x), wd = ToDouble(w), dyd = ToDouble(dy);
  auto dw_ref = ToDouble(dw0), db_ref = ToDouble(db0);
  std::vector<double> dx_ref(n * in);
  ref::LinearBackward(dyd.data(), xd.data(), wd.data(), dx_ref.data(), dw_ref.data(), db_ref.data(),
                      n, in, out);
  EXPECT_LT(RelativeError(dx, dx_ref), kTolerance);
  EXPECT_LT(RelativeError(dw, dw_ref), kTolerance);
  EXPECT_LT(RelativeError(db, db_ref), kTolerance);
}

TEST(OpsBackwardTest, LinearBackwardTwiceAccumulatesTwiceTheGradient) {
  const int64_t n = 9, in = 21, out = 11;
  auto x = Random(n * in, 15), w = Random(out * in, 16), dy = Random(n * out, 17);
  std::vector<float> dx(n * in), once_w(out * in, 0.0f), once_b(out, 0.0f);
  cpu::LinearBackward(dy.data(), x.data(), w.data(), dx.data(), once_w.data(), once_b.data(), n, in,
                      out);
  std::vector<float> twice_w(out * in, 0.0f), twice_b(out, 0.0f);
  for (int step = 0; step < 2; ++step) {
    cpu::LinearBackward(dy.data(), x.data(), w.data(), dx.data(), twice_w.data(), twice_b.data(), n,
                        in, out);
  }
  std::vector<double> expected_w(once_w.begin(), once_w.end());
  std::vector<double> expected_b(once_b.begin(), once_b.end());
  for (double& g : expected_w) g *= 2;
  for (double& g : expected_b) g *= 2;
  EXPECT_LT(RelativeError(twice_w, expected_w), 1e-6);
  EXPECT_LT(RelativeError(twice_b, expected_b), 1e-6);
}

TEST(OpsBackwardTest, LinearBackwardSkipsNullOutputs) {
  const int64_t n = 6, in = 10, out = 7;
  auto x = Random(n * in, 18), w = Random(out * in, 19), dy = Random(n * out, 20);
  std::vector<float> dx(n * in), dw(out * in, 0.0f), db(out, 0.0f);
  cpu::LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(), db.data(), n, in, out);
  std::vector<float> dx_only(n * in), dw_only(out * in, 0.0f), db_only(out, 0.0f);
  cpu::LinearBackward(dy.data(), x.data(), w.data(), dx_only.data(), nullptr, nullptr, n, in, out);
  cpu::LinearBackward(dy.data(), x.data(), w.data(), nullptr, dw_only.data(), nullptr, n, in, out);
  cpu::LinearBackward(dy.data(), x.data(), w.data(), nullptr, nullptr, db_only.data(), n, in, out);
  EXPECT_EQ(dx_only, dx);
  EXPECT_EQ(dw_only, dw);
  EXPECT_EQ(db_only, db);
}

TEST(OpsBackwardTest, RopeBackwardMatchesReferenceAndUndoesRope) {
  const int64_t batch = 2, seq_len = 7, heads = 3, head_dim = 10;
  std::vector<float> inv_freq = {1.0f, 0.3f, 0.1f, 0.03f, 0.01f};
  std::vector<float> cos_f, sin_f;
  ref::RopeTables(inv_freq, seq_len, &cos_f, &sin_f);
  std::vector<double> cos_d(cos_f.begin(), cos_f.end()), sin_d(sin_f.begin(), sin_f.end());
  auto g = Random(batch * seq_len * heads * head_dim, 21);
  auto g_ref = ToDouble(g);
  cpu::ApplyRopeBackward(g.data(), cos_f.data(), sin_f.data(), batch, seq_len, heads, head_dim);
  ref::ApplyRopeBackward(g_ref.data(), cos_d.data(), sin_d.data(), batch, seq_len, heads, head_dim);
  EXPECT_LT(RelativeError(g, g_ref), 1e-6);
  // A rotation's transpose is its inverse.
  auto x = Random(g.size(), 22);
  auto round_trip = x;
  cpu::ApplyRope(round_trip.data(), cos_f.data(), sin_f.data(), batch, seq_len, heads, head_dim);
  cpu::ApplyRopeBackward(round_trip.data(), cos_f.data(), sin_f.data(), batch, seq_len, heads,
                         head_dim);
  EXPECT_LT(RelativeError(round_trip, ToDouble(x)), 1e-6);
}

TEST(OpsBackwardTest, SiluMulBackwardMatchesReferenceAndMayRunInPlace) {
  const int64_t n = 1001;
  auto gate = Random(n, 23, 4.0f), up = Random(n, 24), dout = Random(n, 25);
  std::vector<float> dgate(n, kNaN), dup(n, kNaN);
  cpu::SiluMulBackward(gate.data(), up.data(), dout.data(), dgate.data(), dup.data(), n);
  auto gd = ToDouble(gate), ud = ToDouble(up), dd = ToDouble(dout);
  std::vector<double> dgate_ref(n), dup_ref(n);
  ref::SiluMulBackward(gd.data(), ud.data(), dd.data(), dgate_ref.data(), dup_ref.data(), n);
  EXPECT_LT(RelativeError(dgate, dgate_ref), kTolerance);
  EXPECT_LT(RelativeError(dup, dup_ref), kTolerance);
  // dgate over gate and dup over up, as the MLP backward uses them.
  auto in_place_gate = gate, in_place_up = up;
  cpu::SiluMulBackward(in_place_gate.data(), in_place_up.data(), dout.data(), in_place_gate.data(),
                       in_place_up.data(), n);
  EXPECT_EQ(in_place_gate, dgate);
  EXPECT_EQ(in_place_up, dup);
}

TEST(OpsBackwardTest, EmbeddingBackwardAccumulatesRepeatedTokens) {
  const int64_t vocab = 11, c = 13;
  const std::vector<int32_t> tokens = {4, 0, 4, 10, 4, 7, 0};
  const auto n = static_cast<int64_t>(tokens.size());
  auto dx = Random(n * c, 26), dtable0 = Random(vocab * c, 27);
  auto dtable = dtable0;
  cpu::EmbeddingBackward(dx.data(), tokens.data(), dtable.data(), n, c);
  auto dxd = ToDouble(dx), dtable_ref = ToDouble(dtable0);
  ref::EmbeddingBackward(dxd.data(), tokens.data(), dtable_ref.data(), n, c);
  EXPECT_LT(RelativeError(dtable, dtable_ref), 1e-6);
  // Row 4 collects three rows of dx; rows never named are untouched.
  EXPECT_FLOAT_EQ(dtable[4 * c + 2],
                  dtable0[4 * c + 2] + dx[0 * c + 2] + dx[2 * c + 2] + dx[4 * c + 2]);
  for (int64_t i = 0; i < c; ++i) EXPECT_EQ(dtable[5 * c + i], dtable0[5 * c + i]);
}

struct AttentionCase {
  int64_t batch, seq_len, heads, kv_heads, head_dim, window;
};

void PrintTo(const AttentionCase& c, std::ostream* os) {
  *os << "B" << c.batch << " T" << c.seq_len << " H" << c.heads << " Hkv" << c.kv_heads << " D"
      << c.head_dim << " window " << c.window;
}

class AttentionBackwardTest : public ::testing::TestWithParam<AttentionCase> {
 protected:
  void SetUp() override {
    const AttentionCase& c = GetParam();
    q_size_ = c.batch * c.seq_len * c.heads * c.head_dim;
    kv_size_ = c.batch * c.seq_len * c.kv_heads * c.head_dim;
    lse_size_ = c.batch * c.heads * c.seq_len;
    q_ = Random(q_size_, 28);
    k_ = Random(kv_size_, 29);
    v_ = Random(kv_size_, 30);
    dout_ = Random(q_size_, 31);
  }
  int64_t q_size_ = 0, kv_size_ = 0, lse_size_ = 0;
  std::vector<float> q_, k_, v_, dout_;
};

TEST_P(AttentionBackwardTest, ForwardIsBitIdenticalToAttentionAndMatchesReference) {
  const AttentionCase c = GetParam();
  std::vector<float> scratch(cpu::AttentionScratchSize(c.seq_len));
  std::vector<float> out(q_size_), out_plain(q_size_), lse(lse_size_, kNaN);
  cpu::AttentionForward(q_.data(), k_.data(), v_.data(), out.data(), lse.data(), c.batch, c.seq_len,
                        c.heads, c.kv_heads, c.head_dim, c.window, scratch.data());
  cpu::Attention(q_.data(), k_.data(), v_.data(), out_plain.data(), c.batch, c.seq_len, c.heads,
                 c.kv_heads, c.head_dim, c.window, scratch.data());
  EXPECT_EQ(out, out_plain);
  auto qd = ToDouble(q_), kd = ToDouble(k_), vd = ToDouble(v_);
  std::vector<double> out_ref(q_size_), lse_ref(lse_size_);
  ref::AttentionForward(qd.data(), kd.data(), vd.data(), out_ref.data(), lse_ref.data(), c.batch,
                        c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window);
  EXPECT_LT(RelativeError(out, out_ref), 1e-6);
  EXPECT_LT(RelativeError(lse, lse_ref), 1e-6);
}

TEST_P(AttentionBackwardTest, BackwardMatchesReferenceAndOverwritesGradients) {
  const AttentionCase c = GetParam();
  std::vector<float> scratch(cpu::AttentionScratchSize(c.seq_len));
  std::vector<float> out(q_size_), lse(lse_size_);
  cpu::AttentionForward(q_.data(), k_.data(), v_.data(), out.data(), lse.data(), c.batch, c.seq_len,
                        c.heads, c.kv_heads, c.head_dim, c.window, scratch.data());
  std::vector<float> backward_scratch(cpu::AttentionBackwardScratchSize(c.seq_len), kNaN);
  std::vector<float> dq(q_size_, kNaN), dk(kv_size_, kNaN), dv(kv_size_, kNaN);
  cpu::AttentionBackward(q_.data(), k_.data(), v_.data(), out.data(), lse.data(), dout_.data(),
                         dq.data(), dk.data(), dv.data(), c.batch, c.seq_len, c.heads, c.kv_heads,
                         c.head_dim, c.window, backward_scratch.data());
  auto qd = ToDouble(q_), kd = ToDouble(k_), vd = ToDouble(v_), doutd = ToDouble(dout_);
  std::vector<double> out_ref(q_size_), lse_ref(lse_size_);
  ref::AttentionForward(qd.data(), kd.data(), vd.data(), out_ref.data(), lse_ref.data(), c.batch,
                        c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window);
  std::vector<double> dq_ref(q_size_), dk_ref(kv_size_), dv_ref(kv_size_);
  ref::AttentionBackward(qd.data(), kd.data(), vd.data(), out_ref.data(), lse_ref.data(),
                         doutd.data(), dq_ref.data(), dk_ref.data(), dv_ref.data(), c.batch,
                         c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window);
  EXPECT_LT(RelativeError(dv, dv_ref), kTolerance);
  if (c.seq_len == 1 || c.window == 1) {
    // Each query sees only its own key, so dq and dk vanish (up to fp32
    // rounding of dP - rowsum(dO * O), with unit-scale inputs).
    for (float g : dq) EXPECT_LT(std::abs(g), 1e-5f);
    for (float g : dk) EXPECT_LT(std::abs(g), 1e-5f);
  } else {
    EXPECT_LT(RelativeError(dq, dq_ref), kTolerance);
    EXPECT_LT(RelativeError(dk, dk_ref), kTolerance);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionBackwardTest,
                         ::testing::Values(AttentionCase{1, 1, 1, 1, 4, 0},    // T = 1
                                           AttentionCase{3, 1, 4, 2, 5, 0},    // T = 1, GQA
                                           AttentionCase{2, 9, 4, 4, 8, 0},    // MHA
                                           AttentionCase{2, 9, 6, 2, 6, 0},    // GQA
                                           AttentionCase{1, 13, 4, 1, 8, 4},   // MQA + window
                                           AttentionCase{3, 7, 2, 2, 2, 1},    // window 1
                                           AttentionCase{2, 17, 6, 3, 5, 5},   // odd D + window
                                           AttentionCase{1, 33, 4, 2, 16, 40}  // window > T
                                           ));

struct LmHeadInputs {
  int64_t n, c, v;
  std::vector<float> x, w;
  std::vector<int32_t> targets;
  std::vector<uint8_t> mask;  // empty: mask == nullptr
};

// Random inputs; with `masked`, about a third of the rows (in runs) are
// outside the loss and carry the ignore target -100, which must never be read.
LmHeadInputs MakeLmHeadInputs(int64_t n, int64_t c, int64_t v, bool masked, uint32_t seed) {
  LmHeadInputs in{n, c, v, Random(n * c, seed), Random(v * c, seed + 1, 0.3f), {}, {}};
  std::mt19937 rng(seed + 2);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(v - 1));
  for (int64_t r = 0; r < n; ++r) in.targets.push_back(token(rng));
  if (masked) {
    for (int64_t r = 0; r < n; ++r) in.mask.push_back(r % 7 < 2 || r % 29 == 5 ? 0 : 1);
    for (int64_t r = 0; r < n; ++r) {
      if (in.mask[r] == 0) in.targets[r] = -100;
    }
  }
  return in;
}

struct LmHeadResult {
  double loss;
  std::vector<float> dx, dw;
};

LmHeadResult RunLmHead(const LmHeadInputs& in, float scale, const std::vector<float>& dw0) {
  LmHeadResult result{0.0, std::vector<float>(in.n * in.c, kNaN), dw0};
  std::vector<float> scratch(cpu::LmHeadScratchSize(in.v));
  result.loss = cpu::LmHeadCrossEntropy(
      in.x.data(), in.w.data(), in.targets.data(), in.mask.empty() ? nullptr : in.mask.data(),
      scale, result.dx.data(), result.dw.data(), in.n, in.c, in.v, scratch.data());
  return result;
}

void ExpectLmHeadMatchesReference(const LmHeadInputs& in) {
  int64_t rows_in_loss = in.n;
  if (!in.mask.empty()) rows_in_loss = std::count(in.mask.begin(), in.mask.end(), 1);
  const float scale = 1.0f / static_cast<float>(rows_in_loss);
  const auto dw0 = Random(in.v * in.c, 99);
  const LmHeadResult fast = RunLmHead(in, scale, dw0);
  auto xd = ToDouble(in.x), wd = ToDouble(in.w), dw_ref = ToDouble(dw0);
  std::vector<double> dx_ref(in.n * in.c);
  const double loss_ref = ref::LmHeadCrossEntropy(
      xd.data(), wd.data(), in.targets.data(), in.mask.empty() ? nullptr : in.mask.data(),
      static_cast<double>(scale), dx_ref.data(), dw_ref.data(), in.n, in.c, in.v);
  EXPECT_NEAR(fast.loss, loss_ref, 1e-6 * loss_ref);
  EXPECT_LT(RelativeError(fast.dx, dx_ref), kTolerance);
  EXPECT_LT(RelativeError(fast.dw, dw_ref), kTolerance);
  for (int64_t r = 0; r < in.n; ++r) {
    if (in.mask.empty() || in.mask[r] != 0) continue;
    for (int64_t i = 0; i < in.c; ++i) ASSERT_EQ(fast.dx[r * in.c + i], 0.0f) << "row " << r;
  }
}

TEST(OpsBackwardTest, LmHeadCrossEntropyWithMaskMatchesReferenceAcrossChunks) {
  // 2 full chunks and a partial one; masked-out runs split chunks unevenly.
  ExpectLmHeadMatchesReference(
      MakeLmHeadInputs(2 * cpu::LmHeadChunkRows(101) + 13, 37, 101, true, 32));
}

TEST(OpsBackwardTest, LmHeadCrossEntropyWithoutMaskMatchesReference) {
  ExpectLmHeadMatchesReference(MakeLmHeadInputs(cpu::LmHeadChunkRows(57) + 6, 19, 57, false, 35));
  ExpectLmHeadMatchesReference(MakeLmHeadInputs(3, 8, 5, false, 38));
}

TEST(OpsBackwardTest, LmHeadCrossEntropyLossIsTheSameWithoutGradients) {
  const LmHeadInputs in = MakeLmHeadInputs(100, 16, 33, true, 41);
  const double with_gradients = RunLmHead(in, 0.5f, std::vector<float>(in.v * in.c, 0.0f)).loss;
  std::vector<float> scratch(cpu::LmHeadScratchSize(in.v));
  const double loss_only =
      cpu::LmHeadCrossEntropy(in.x.data(), in.w.data(), in.targets.data(), in.mask.data(), 0.5f,
                              nullptr, nullptr, in.n, in.c, in.v, scratch.data());
  EXPECT_EQ(loss_only, with_gradients);
  // dx alone equals dx computed together with dw.
  const LmHeadResult both = RunLmHead(in, 0.5f, std::vector<float>(in.v * in.c, 0.0f));
  std::vector<float> dx_only(in.n * in.c);
  cpu::LmHeadCrossEntropy(in.x.data(), in.w.data(), in.targets.data(), in.mask.data(), 0.5f,
                          dx_only.data(), nullptr, in.n, in.c, in.v, scratch.data());
  EXPECT_EQ(dx_only, both.dx);
}

TEST(OpsBackwardTest, LmHeadCrossEntropyTwiceAccumulatesTwiceTheWeightGradient) {
  const LmHeadInputs in = MakeLmHeadInputs(90, 12, 29, true, 44);
  const std::vector<float> zero(in.v * in.c, 0.0f);
  const LmHeadResult once = RunLmHead(in, 1.0f, zero);
  const LmHeadResult twice = RunLmHead(in, 1.0f, once.dw);
  std::vector<double> expected(once.dw.begin(), once.dw.end());
  for (double& g : expected) g *= 2;
  EXPECT_LT(RelativeError(twice.dw, expected), 1e-6);
  EXPECT_EQ(twice.loss, once.loss);
}

}  // namespace
}  // namespace llamapro
