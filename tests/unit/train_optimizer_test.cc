#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/parameters.h"
#include "train/optimizer.h"

namespace llamapro {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Parameter MakeParam(const std::string& name, std::vector<float> value, bool decay = true) {
  Parameter p;
  p.name = name;
  p.shape = {static_cast<int64_t>(value.size())};
  p.value = std::move(value);
  p.decay = decay;
  p.SetTrainable(true);
  return p;
}

std::unique_ptr<Optimizer> Make(const OptimizerConfig& config, std::vector<Parameter*> params) {
  auto optimizer = MakeOptimizer(config, std::move(params));
  EXPECT_TRUE(optimizer.ok()) << optimizer.status();
  return optimizer.ok() ? *std::move(optimizer) : nullptr;
}

// The inputs of the PyTorch fixture below: two small tensors, one with weight
// decay ("w") and one without (a norm weight, "n"), and 5 steps of gradients.
std::vector<float> W0() { return {-0.15625f, 0.15625f, -0.21875f, 0.09375f, -0.28125f, 0.03125f}; }
std::vector<float> N0() { return {0.84375f, 1.03125f, 0.78125f}; }
std::vector<float> GradW(int t) {
  std::vector<float> g(6);
  for (int i = 0; i < 6; ++i) g[i] = static_cast<float>(((7 * i + 3 * t + 1) % 9 - 4) / 8.0);
  return g;
}
std::vector<float> GradN(int t) {
  std::vector<float> g(3);
  for (int i = 0; i < 3; ++i) g[i] = static_cast<float>(((5 * i + 2 * t) % 7 - 3) / 4.0);
  return g;
}
constexpr double kLrs[] = {1e-2, 8e-3, 6e-3, 4e-3, 2e-3};

void RunFixtureSteps(Optimizer& optimizer, Parameter& w, Parameter& n, int from, int to) {
  for (int t = from; t < to; ++t) {
    w.grad = GradW(t);
    n.grad = GradN(t);
    optimizer.Step(kLrs[t]);
  }
}

void ExpectNear(const std::vector<float>& actual, const std::vector<float>& expected,
                const char* what) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  for (size_t i = 0; i < actual.size(); ++i) {
    // A few float ulps: PyTorch's vectorized kernels fuse multiply-adds.
    EXPECT_NEAR(actual[i], expected[i], 4e-7 * std::max(1.0f, std::fabs(expected[i])))
        << what << "[" << i << "]";
  }
}

// Expected values from PyTorch 1.13.1 (Debian python3-torch), produced once by:
//   pw, pn = Parameter(W0), Parameter(N0)
//   opt = torch.optim.AdamW([{"params": [pw], "weight_decay": 0.1},
//                            {"params": [pn], "weight_decay": 0.0}],
//                           lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
//   for t in range(5):
//     pw.grad, pn.grad = GradW(t), GradN(t)   # as above, in float32
//     for g in opt.param_groups: g["lr"] = kLrs[t]
//     opt.step()
// and printed with repr(float(x)); the SGD fixture likewise with
// torch.optim.SGD(same groups, lr=1e-2, momentum=0.9).
TEST(OptimizerTest, AdamWMatchesTorchAdamWForFiveSteps) {
  Parameter w = MakeParam("w", W0(), /*decay=*/true);
  Parameter n = MakeParam("n", N0(), /*decay=*/false);
  OptimizerConfig config;
  config.beta1 = 0.9;
  config.beta2 = 0.95;
  config.eps = 1e-8;
  config.weight_decay = 0.1;
  auto optimizer = Make(config, {&w, &n});
  ASSERT_NE(optimizer, nullptr);
  RunFixtureSteps(*optimizer, w, n, 0, 5);
  ExpectNear(w.value,
             {-0.1393110752105713f, 0.13859370350837708f, -0.2215682864189148f,
              0.08743751794099808f, -0.27182483673095703f, 0.05306004732847214f},
             "w");
  ExpectNear(n.value, {0.863330602645874f, 1.0254051685333252f, 0.7781555652618408f}, "n");
  const auto state = optimizer->StateTensors();
  ASSERT_EQ(state.size(), 4u);
  ExpectNear(*state[0].second,
             {-0.027978749945759773f, 0.044704996049404144f, -0.05767250061035156f,
              0.03446250036358833f, 0.02320999838411808f, -0.07916750013828278f},
             "exp_avg.w");
  ExpectNear(*state[1].second,
             {0.018752388656139374f, 0.028565702959895134f, 0.029436346143484116f,
              0.019405370578169823f, 0.018246404826641083f, 0.026327714323997498f},
             "exp_avg_sq.w");
  EXPECT_EQ(optimizer->step(), 5);
}

TEST(OptimizerTest, SgdWithMomentumMatchesTorchSgdForFiveSteps) {
  Parameter w = MakeParam("w", W0(), /*decay=*/true);
  Parameter n = MakeParam("n", N0(), /*decay=*/false);
  OptimizerConfig config;
  config.name = "sgd";
  config.momentum = 0.9;
  config.weight_decay = 0.1;
  auto optimizer = Make(config, {&w, &n});
  ASSERT_NE(optimizer, nullptr);
  RunFixtureSteps(*optimizer, w, n, 0, 5);
  ExpectNear(w.value,
             {-0.1474539190530777f, 0.14286208152770996f, -0.21393203735351562f,
              0.08983258903026581f, -0.27957800030708313f, 0.04677432402968407f},
             "w");
  ExpectNear(n.value, {0.8618355989456177f, 1.0315344333648682f, 0.7815660238265991f}, "n");
  const auto state = optimizer->StateTensors();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_EQ(state[0].first, "momentum_buffer.w");
  ExpectNear(*state[0].second,
             {-0.34152376651763916f, 0.5080406665802002f, -0.6658464670181274f,
              0.38214775919914246f, 0.11782334744930267f, -0.7753515839576721f},
             "momentum_buffer.w");
}

// AdamW written out in double, straight from Loshchilov & Hutter / the
// PyTorch docs, as an independent reference.
struct ReferenceAdamW {
  double lr_wd, beta1, beta2, eps;
  std::vector<double> p, m, v;
  void Step(double lr, double wd, const std::vector<float>& g, int t) {
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - lr * wd;
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(beta1, t));
      const double v_hat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + eps);
    }
  }
};

TEST(OptimizerTest, AdamWMatchesHandWrittenDoubleReference) {
  Parameter w = MakeParam("w", W0());
  OptimizerConfig config;
  config.beta1 = 0.8;
  config.beta2 = 0.99;
  config.eps = 1e-6;
  config.weight_decay = 0.05;
  auto optimizer = Make(config, {&w});
  ASSERT_NE(optimizer, nullptr);
  ReferenceAdamW ref{0, 0.8, 0.99, 1e-6, {}, std::vector<double>(6), std::vector<double>(6)};
  for (float x : W0()) ref.p.push_back(x);
  for (int t = 0; t < 5; ++t) {
    w.grad = GradW(t);
    optimizer->Step(kLrs[t]);
    ref.Step(kLrs[t], 0.05, w.grad, t + 1);
  }
  for (size_t i = 0; i < 6; ++i) EXPECT_NEAR(w.value[i], ref.p[i], 1e-6) << i;
}

TEST(OptimizerTest, AdamWFirstStepMovesEachWeightByLrAgainstItsGradientSign) {
  // Step 1: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
  Parameter w = MakeParam("w", {1.0f, 1.0f, 1.0f}, /*decay=*/false);
  w.grad = {0.5f, -2.0f, 0.0f};
  OptimizerConfig config;
  config.eps = 1e-8;
  auto optimizer = Make(config, {&w});
  ASSERT_NE(optimizer, nullptr);
  optimizer->Step(0.01);
  EXPECT_NEAR(w.value[0], 0.99f, 1e-7);
  EXPECT_NEAR(w.value[1], 1.01f, 1e-7);
  EXPECT_EQ(w.value[2], 1.0f);
}

TEST(OptimizerTest, AdamWDecaysOnlyParametersMarkedDecay) {
  Parameter weight = MakeParam("model.layers.0.mlp.up_proj.weight", {2.0f, -4.0f}, true);
  Parameter norm = MakeParam("model.layers.0.input_layernorm.weight", {2.0f, -4.0f}, false);
  OptimizerConfig config;
  config.weight_decay = 0.1;
  auto optimizer = Make(config, {&weight, &norm});
  ASSERT_NE(optimizer, nullptr);
  for (int t = 0; t < 3; ++t) optimizer->Step(0.5);  // Zero gradients: only decay moves.
  const float factor = static_cast<float>(1.0 - 0.5 * 0.1);
  EXPECT_EQ(weight.value[0], 2.0f * factor * factor * factor);
  EXPECT_EQ(weight.value[1], -4.0f * factor * factor * factor);
  EXPECT_THAT(norm.value, ElementsAre(2.0f, -4.0f));
}

TEST(OptimizerTest, RestoredStateContinuesBitIdentically) {
  OptimizerConfig config;
  // Uninterrupted: 5 steps.
  Parameter w1 = MakeParam("w", W0());
  Parameter n1 = MakeParam("n", N0(), false);
  auto straight = Make(config, {&w1, &n1});
  ASSERT_NE(straight, nullptr);
  RunFixtureSteps(*straight, w1, n1, 0, 5);

  // Interrupted after 2 steps; a fresh optimizer restores state and step.
  Parameter w2 = MakeParam("w", W0());
  Parameter n2 = MakeParam("n", N0(), false);
  auto first = Make(config, {&w2, &n2});
  ASSERT_NE(first, nullptr);
  RunFixtureSteps(*first, w2, n2, 0, 2);
  Parameter w3 = MakeParam("w", w2.value);
  Parameter n3 = MakeParam("n", n2.value, false);
  auto resumed = Make(config, {&w3, &n3});
  ASSERT_NE(resumed, nullptr);
  for (const auto& [name, values] : first->StateTensors()) {
    ASSERT_TRUE(resumed->LoadStateTensor(name, *values).ok()) << name;
  }
  resumed->set_step(first->step());
  RunFixtureSteps(*resumed, w3, n3, 2, 5);

  EXPECT_EQ(w3.value, w1.value);
  EXPECT_EQ(n3.value, n1.value);
  const auto a = straight->StateTensors();
  const auto b = resumed->StateTensors();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(*a[i].second, *b[i].second) << a[i].first;
}

TEST(OptimizerTest, StateTensorsAreNamedPerParameterAndCounted) {
  Parameter a = MakeParam("model.layers.4.self_attn.o_proj.weight", {1, 2, 3, 4});
  Parameter b = MakeParam("model.layers.4.post_attention_layernorm.weight", {1, 2}, false);
  auto adamw = Make(OptimizerConfig(), {&a, &b});
  ASSERT_NE(adamw, nullptr);
  EXPECT_EQ(adamw->name(), "adamw");
  std::vector<std::string> names;
  for (const auto& [name, values] : adamw->StateTensors()) {
    names.push_back(name);
    EXPECT_THAT(*values, ::testing::Each(0.0f));
  }
  EXPECT_THAT(names, ElementsAre("exp_avg.model.layers.4.self_attn.o_proj.weight",
                                 "exp_avg_sq.model.layers.4.self_attn.o_proj.weight",
                                 "exp_avg.model.layers.4.post_attention_layernorm.weight",
                                 "exp_avg_sq.model.layers.4.post_attention_layernorm.weight"));
  EXPECT_EQ(adamw->StateBytes(), 2 * (4 + 2) * 4);

  OptimizerConfig sgd;
  sgd.name = "sgd";
  auto plain = Make(sgd, {&a, &b});
  ASSERT_NE(plain, nullptr);
  EXPECT_EQ(plain->StateBytes(), 0);
  EXPECT_TRUE(plain->StateTensors().empty());
}

TEST(OptimizerTest, LoadStateTensorRejectsUnknownNamesAndWrongSizes) {
  Parameter a = MakeParam("a", {1, 2, 3});
  auto optimizer = Make(OptimizerConfig(), {&a});
  ASSERT_NE(optimizer, nullptr);
  absl::Status unknown = optimizer->LoadStateTensor("exp_avg.b", {0, 0, 0});
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.message(), HasSubstr("'exp_avg.b'"));
  EXPECT_THAT(unknown.message(), HasSubstr("exp_avg.*, exp_avg_sq.*"));
  absl::Status size = optimizer->LoadStateTensor("exp_avg_sq.a", {0, 0});
  EXPECT_EQ(size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(size.message(), HasSubstr("'exp_avg_sq.a' has 2 values; parameter 'a' needs 3"));
  ASSERT_TRUE(optimizer->LoadStateTensor("exp_avg.a", {7, 8, 9}).ok());
  EXPECT_THAT(*optimizer->StateTensors()[0].second, ElementsAre(7, 8, 9));
}

TEST(OptimizerTest, PlainSgdSubtractsLrTimesGradient) {
  Parameter w = MakeParam("w", {1.0f, -2.0f, 0.25f});
  w.grad = {0.5f, 4.0f, -1.0f};
  OptimizerConfig config;
  config.name = "sgd";
  config.weight_decay = 0;
  auto optimizer = Make(config, {&w});
  ASSERT_NE(optimizer, nullptr);
  optimizer->Step(0.125);
  EXPECT_THAT(w.value, ElementsAre(1.0f - 0.0625f, -2.5f, 0.375f));
  EXPECT_THAT(w.grad, ElementsAre(0.5f, 4.0f, -1.0f));  // Step leaves gradients alone.
  EXPECT_EQ(optimizer->step(), 1);
}

TEST(OptimizerTest, MakeOptimizerRejectsBadConfigsAndParameters) {
  Parameter a = MakeParam("a", {1, 2});
  Parameter frozen = MakeParam("frozen", {1});
  frozen.SetTrainable(false);
  auto message = [](const OptimizerConfig& config, std::vector<Parameter*> params) {
    auto optimizer = MakeOptimizer(config, std::move(params));
    return optimizer.ok() ? std::string("ok") : std::string(optimizer.status().message());
  };
  OptimizerConfig config;
  EXPECT_THAT(message(config, {&a, &frozen}), HasSubstr("'frozen' is frozen"));
  EXPECT_THAT(message(config, {&a, &a}), HasSubstr("'a' is given to the optimizer twice"));
  EXPECT_THAT(message(config, {nullptr}), HasSubstr("#0 is null"));
  config.name = "adam";
  EXPECT_THAT(message(config, {&a}), HasSubstr("unknown optimizer 'adam'"));
  config = OptimizerConfig();
  config.beta2 = 1.0;
  EXPECT_THAT(message(config, {&a}), HasSubstr("beta2"));
  config = OptimizerConfig();
  config.eps = 0;
  EXPECT_THAT(message(config, {&a}), HasSubstr("eps"));
  EXPECT_EQ(message(OptimizerConfig(), {}), "ok");
}

TEST(OptimizerTest, GlobalGradNormIsTheL2NormOverAllParameters) {
  Parameter a = MakeParam("a", {0, 0});
  Parameter b = MakeParam("b", {0});
  a.grad = {3, 4};
  b.grad = {12};
  EXPECT_EQ(GlobalGradNorm({&a, &b}), 13.0);
  EXPECT_EQ(GlobalGradNorm({}), 0.0);
  // Accumulated in double: float would lose the small terms entirely.
  Parameter big = MakeParam("big", std::vector<float>(1 << 20, 0));
  std::fill(big.grad.begin(), big.grad.end(), 1e-3f);
  big.grad[0] = 1e4f;
  const double expected = std::sqrt(1e8 + ((1 << 20) - 1) * double{1e-3f} * double{1e-3f});
  EXPECT_NEAR(GlobalGradNorm({&big}), expected, 1e-9 * expected);
}

TEST(OptimizerTest, ClipGradNormScalesOnlyWhenAboveTheMaximum) {
  Parameter a = MakeParam("a", {0, 0});
  Parameter b = MakeParam("b", {0});
  a.grad = {3, 4};
  b.grad = {12};
  EXPECT_EQ(ClipGradNorm({&a, &b}, 100.0), 13.0);
  EXPECT_THAT(a.grad, ElementsAre(3, 4));
  EXPECT_EQ(ClipGradNorm({&a, &b}, 0.0), 13.0);  // 0 = off.
  EXPECT_THAT(b.grad, ElementsAre(12));
  EXPECT_EQ(ClipGradNorm({&a, &b}, 1.0), 13.0);
  const float coef = static_cast<float>(1.0 / (13.0 + 1e-6));
  EXPECT_THAT(a.grad, ElementsAre(3 * coef, 4 * coef));
  EXPECT_THAT(b.grad, ElementsAre(12 * coef));
  EXPECT_NEAR(GlobalGradNorm({&a, &b}), 1.0, 1e-6);
}

TEST(OptimizerTest, ScaleAndZeroGradientsTouchEveryParameter) {
  Parameter a = MakeParam("a", {0, 0});
  Parameter b = MakeParam("b", {0});
  a.grad = {1, -2};
  b.grad = {4};
  ScaleGradients({&a, &b}, 0.5f);
  EXPECT_THAT(a.grad, ElementsAre(0.5f, -1.0f));
  EXPECT_THAT(b.grad, ElementsAre(2.0f));
  ZeroGradients({&a, &b});
  EXPECT_THAT(a.grad, ElementsAre(0, 0));
  EXPECT_THAT(b.grad, ElementsAre(0));
}

}  // namespace
}  // namespace llamapro
