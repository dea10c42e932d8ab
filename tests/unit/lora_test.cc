// The paper's baselines in the training engine. LoRA: adapters that start as
// the identity, the same logits merged and unmerged, gradients that match
// finite differences. MoE (appendix H): two experts per MLP that start as
// the original model, gradients that match finite differences.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/llama_params.h"
#include "model/llama_train.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using testing::ScratchDir;

LlamaParams Load(const std::string& dir) { return testing::LoadParams(dir); }

std::vector<int32_t> RandomTokens(int64_t count, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> out(count);
  for (int32_t& t : out) t = token(rng);
  return out;
}

LoraSpec AllTargets(const LlamaParams& params, int64_t rank) {
  return {.rank = rank,
          .alpha = 2.0 * static_cast<double>(rank),
          .targets = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
          .blocks = std::vector<bool>(params.blocks.size(), true),
          .seed = 5};
}

// B of every adapter random (as after training), so LoRA changes the model.
void RandomizeB(LlamaParams* params, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.05f);
  for (BlockParams& b : params->blocks) {
    for (LoraAdapter& l : b.lora) {
      for (float& v : l.b.value) v = dist(rng);
    }
  }
}

std::vector<float> Logits(LlamaParams* params, const std::vector<int32_t>& tokens) {
  TrainingPass pass(params, 2, 6, /*for_training=*/false);
  auto logits = pass.Logits(tokens);
  EXPECT_TRUE(logits.ok()) << logits.status();
  return *logits;
}

double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
    norm = std::max(norm, std::abs(static_cast<double>(want[i])));
  }
  return err / norm;
}

TEST(LoraTest, AdaptersStartAsTheIdentityAndTrainAlone) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(2, 4, 2, false, true, DType::kF32, 3), dir.Join("m"));
  LlamaParams base = Load(dir.Join("m"));
  LlamaParams params = Load(dir.Join("m"));
  const std::vector<int32_t> tokens = RandomTokens(2 * 7, params.config.vocab_size, 1);
  ASSERT_TRUE(AddLoraAdapters(AllTargets(params, 4), &params).ok());
  EXPECT_EQ(Logits(&params, tokens), Logits(&base, tokens));  // B = 0: bit for bit.
  // Only the adapters train: 2 blocks x 7 targets x (A, B).
  const std::vector<Parameter*> trainable = params.Trainable();
  EXPECT_EQ(trainable.size(), 28u);
  for (const Parameter* p : trainable) {
    EXPECT_TRUE(p->name.find(".lora_A.weight") != std::string::npos ||
                p->name.find(".lora_B.weight") != std::string::npos)
        << p->name;
  }
  EXPECT_EQ(params.blocks[1].lora[4].a.name, "model.layers.1.mlp.gate_proj.lora_A.weight");
  EXPECT_EQ(params.blocks[1].lora[4].a.shape, (std::vector<int64_t>{4, params.config.hidden_size}));
  EXPECT_EQ(params.blocks[1].lora[4].b.shape,
            (std::vector<int64_t>{params.config.intermediate_size, 4}));
  LoraSpec bad = AllTargets(params, 4);
  bad.targets = {"lm_head"};
  EXPECT_THAT(AddLoraAdapters(bad, &params).message(), HasSubstr("unknown LoRA target 'lm_head'"));
  bad = AllTargets(params, 0);
  EXPECT_THAT(AddLoraAdapters(bad, &params).message(), HasSubstr("rank must be >= 1"));
}

TEST(LoraTest, MergedEqualsUnmergedLogits) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(3, 4, 2, false, true, DType::kF32, 4), dir.Join("m"));
  LlamaParams base = Load(dir.Join("m"));
  const std::vector<int32_t> tokens = RandomTokens(2 * 7, base.config.vocab_size, 2);
  for (int64_t rank : {1, 4, 8}) {
    LlamaParams params = Load(dir.Join("m"));
    ASSERT_TRUE(AddLoraAdapters(AllTargets(params, rank), &params).ok());
    RandomizeB(&params, 10 + rank);
    const std::vector<float> unmerged = Logits(&params, tokens);
    // The adapters matter: the logits moved away from the base model's.
    EXPECT_GT(RelativeError(unmerged, Logits(&base, tokens)), 1e-3) << "rank " << rank;
    MergeLoraAdapters(&params);
    EXPECT_TRUE(params.Trainable().empty());
    EXPECT_LE(RelativeError(Logits(&params, tokens), unmerged), 1e-5) << "rank " << rank;
  }
}

TEST(LoraTest, GradientsMatchFiniteDifferencesOfTheLoss) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(2, 2, 1, true, true, DType::kF32, 7), dir.Join("m"));
  LlamaParams params = Load(dir.Join("m"));
  ASSERT_TRUE(AddLoraAdapters(AllTargets(params, 3), &params).ok());
  RandomizeB(&params, 3);
  const std::vector<int32_t> tokens = RandomTokens(2 * 7, params.config.vocab_size, 3);
  std::vector<uint8_t> mask(tokens.size(), 1);
  mask[4] = 0;
  // Every adapter's gradient is nonzero here (B random), so each check tests
  // something.
  {
    TrainingPass pass(&params, 2, 6);
    ASSERT_TRUE(pass.ForwardBackward(tokens, mask, 1.0f).ok());
    for (Parameter* p : params.Trainable()) {
      double largest = 0;
      for (float g : p->grad) largest = std::max(largest, static_cast<double>(std::abs(g)));
      EXPECT_GT(largest, 1e-6) << p->name;
      std::fill(p->grad.begin(), p->grad.end(), 0.0f);
    }
  }
  const int checked =
      testing::ExpectGradientsMatchFiniteDifferences(&params, tokens, mask, 2, 6, 2);
  EXPECT_EQ(checked, 2 * 7 * 2 * 2);
}

TEST(MoeTest, AnMoeExtendedModelAtInitialisationComputesTheOriginalLogits) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(3, 4, 2, false, false, DType::kF32, 8),
                           dir.Join("m"));
  LlamaParams base = Load(dir.Join("m"));
  LlamaParams params = Load(dir.Join("m"));
  ASSERT_TRUE(AddMoeExperts(&params).ok());
  EXPECT_EQ(params.config.moe_experts, 2);
  const std::vector<int32_t> tokens = RandomTokens(2 * 7, base.config.vocab_size, 4);
  const std::vector<float> original = Logits(&base, tokens);
  EXPECT_LE(RelativeError(Logits(&params, tokens), original), 1e-6);
  // Trainable: each block's second expert (3 matrices) and its mixing logits.
  EXPECT_EQ(params.Trainable().size(), 3u * 4);
  EXPECT_EQ(params.blocks[2].expert_up.name, "model.layers.2.mlp.experts.1.up_proj.weight");
  // Moving the mix or the second expert changes the function.
  params.blocks[1].expert_mix.value = {0.3f, -0.2f};
  params.blocks[1].expert_down.value[5] += 0.5f;
  EXPECT_GT(RelativeError(Logits(&params, tokens), original), 1e-4);
}

TEST(MoeTest, GradientsMatchFiniteDifferencesOfTheLoss) {
  ScratchDir dir;
  testing::WriteCheckpoint(testing::SmallSpec(2, 2, 1, true, false, DType::kF32, 9), dir.Join("m"));
  LlamaParams params = Load(dir.Join("m"));
  ASSERT_TRUE(AddMoeExperts(&params).ok());
  // Experts apart and the mix off balance, so every term of the backward shows.
  std::mt19937_64 rng(2);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  for (BlockParams& b : params.blocks) {
    for (Parameter* p : {&b.expert_gate, &b.expert_up, &b.expert_down}) {
      for (float& v : p->value) v += noise(rng);
    }
    b.expert_mix.value = {0.4f, -0.3f};
  }
  const std::vector<int32_t> tokens = RandomTokens(2 * 7, params.config.vocab_size, 5);
  std::vector<uint8_t> mask(tokens.size(), 1);
  const int checked =
      testing::ExpectGradientsMatchFiniteDifferences(&params, tokens, mask, 2, 6, 2);
  EXPECT_EQ(checked, 2 * 4 * 2);
}

}  // namespace
}  // namespace llamapro
