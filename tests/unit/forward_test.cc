// The fp32 forward pass against an independent double-precision reference.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "base/file.h"
#include "gtest/gtest.h"
#include "model/llama.h"
#include "nlohmann/json.hpp"
#include "tests/testing/reference_llama.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using testing::ScratchDir;

struct ForwardCase {
  const char* name;
  SynthSpec spec;
  nlohmann::json rope_scaling;  // Written into config.json when not null.
  int64_t batch, seq_len;
};

void PrintTo(const ForwardCase& c, std::ostream* os) { *os << c.name; }

SynthSpec With(SynthSpec spec, void (*edit)(SynthSpec&)) {
  edit(spec);
  return spec;
}

std::vector<ForwardCase> Cases() {
  using testing::SmallSpec;
  return {
      {"MhaUntied", SmallSpec(2, 3, 3, false, false), nullptr, 2, 7},
      {"GqaTiedWithBiases", SmallSpec(3, 4, 2, true, true), nullptr, 1, 11},
      {"MqaBf16Weights", SmallSpec(2, 4, 1, false, false, DType::kBF16), nullptr, 2, 5},
      {"F16Weights", SmallSpec(2, 2, 2, false, true, DType::kF16), nullptr, 1, 6},
      {"ExplicitHeadDim",
       With(SmallSpec(2, 4, 2, false, false), [](SynthSpec& s) { s.head_dim = 10; }), nullptr, 1,
       8},
      {"MistralSlidingWindow",
       With(SmallSpec(2, 4, 2, false, false),
            [](SynthSpec& s) {
              s.architecture = Architecture::kMistral;
              s.sliding_window = 4;
            }),
       nullptr, 2, 12},
      {"LinearRopeScaling",
       SmallSpec(2, 2, 1, false, false),
       {{"type", "linear"}, {"factor", 2.0}},
       1,
       9},
      {"Llama3RopeScaling",
       With(SmallSpec(2, 2, 1, false, false),
            [](SynthSpec& s) {
              s.hidden_size = 2 * 32;  // head_dim 32: frequencies fall in all three bands.
              s.rope_theta = 500000.0;
            }),
       {{"rope_type", "llama3"},
        {"factor", 8.0},
        {"low_freq_factor", 1.0},
        {"high_freq_factor", 4.0},
        {"original_max_position_embeddings", 64}},
       1,
       10},
  };
}

class ForwardTest : public ::testing::TestWithParam<ForwardCase> {};

TEST_P(ForwardTest, MatchesDoublePrecisionReferenceWithin1e5Relative) {
  const ForwardCase& c = GetParam();
  ScratchDir dir;
  const std::string model = dir.Join("model");
  testing::WriteCheckpoint(c.spec, model);
  if (!c.rope_scaling.is_null()) {
    auto json = nlohmann::ordered_json::parse(*ReadFile(JoinPath(model, "config.json")));
    json["rope_scaling"] = c.rope_scaling;
    ASSERT_TRUE(WriteFileAtomic(JoinPath(model, "config.json"), json.dump()).ok());
  }
  auto config = LoadLlamaConfig(model);
  ASSERT_TRUE(config.ok()) << config.status();
  auto reader = CheckpointReader::Open(model);
  ASSERT_TRUE(reader.ok()) << reader.status();

  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config->vocab_size - 1));
  std::vector<int32_t> tokens(c.batch * c.seq_len);
  for (int32_t& t : tokens) t = token(rng);

  auto weights = LoadLlamaWeights(**reader, *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  auto logits = ForwardLogits(*config, *weights, tokens, c.batch, c.seq_len);
  ASSERT_TRUE(logits.ok()) << logits.status();
  std::vector<double> expected =
      testing::ReferenceLogits<double>(*config, **reader, tokens, c.batch, c.seq_len);
  ASSERT_EQ(logits->size(), expected.size());

  double max_ref = 0, max_diff = 0, spread = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_ref = std::max(max_ref, std::abs(expected[i]));
    max_diff = std::max(max_diff, std::abs((*logits)[i] - expected[i]));
    spread = std::max(spread, std::abs(expected[i] - expected[0]));
  }
  EXPECT_GT(spread, 0.1) << "logits should vary, or the comparison proves little";
  EXPECT_LE(max_diff, 1e-5 * max_ref)
      << "max |fp32 - double| " << max_diff << ", max |logit| " << max_ref;

  // The block-by-block path gives the same bits.
  auto streamed = StreamingLogits(**reader, *config, tokens, c.batch, c.seq_len);
  ASSERT_TRUE(streamed.ok());
  EXPECT_EQ(*streamed, *logits);
}

INSTANTIATE_TEST_SUITE_P(Configs, ForwardTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ForwardTest, SlidingWindowChangesLogitsOnlyBeyondTheWindow) {
  ScratchDir dir;
  SynthSpec spec = testing::SmallSpec(2, 2, 2, false, false);
  spec.architecture = Architecture::kMistral;
  testing::WriteCheckpoint(spec, dir.Join("full"));
  spec.sliding_window = 3;
  testing::WriteCheckpoint(spec, dir.Join("windowed"));
  std::vector<int32_t> tokens = {5, 17, 3, 88, 41, 9, 60};
  std::vector<float> a, b;
  for (auto [name, out] : {std::pair{"full", &a}, std::pair{"windowed", &b}}) {
    auto config = LoadLlamaConfig(dir.Join(name));
    auto reader = CheckpointReader::Open(dir.Join(name));
    ASSERT_TRUE(config.ok() && reader.ok());
    auto logits = StreamingLogits(**reader, *config, tokens, 1, 7);
    ASSERT_TRUE(logits.ok());
    *out = *logits;
  }
  const size_t v = 97;
  for (size_t i = 0; i < 3 * v; ++i) ASSERT_EQ(a[i], b[i]) << "positions < window agree";
  bool differs = false;
  for (size_t i = 3 * v; i < a.size(); ++i) differs |= a[i] != b[i];
  EXPECT_TRUE(differs);
}

TEST(ForwardTest, OutOfVocabularyTokensAreRefused) {
  ScratchDir dir;
  SynthSpec spec = testing::SmallSpec(1, 2, 2, false, false);
  testing::WriteCheckpoint(spec, dir.Join("m"));
  auto config = LoadLlamaConfig(dir.Join("m"));
  auto reader = CheckpointReader::Open(dir.Join("m"));
  ASSERT_TRUE(config.ok() && reader.ok());
  std::vector<int32_t> tokens = {1, 97};
  auto logits = StreamingLogits(**reader, *config, tokens, 1, 2);
  ASSERT_FALSE(logits.ok());
  EXPECT_NE(logits.status().message().find("token id 97 at position 1"), absl::string_view::npos);
}

}  // namespace
}  // namespace llamapro
