#include "model/config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

using ::testing::HasSubstr;

constexpr char kLlama2[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "max_position_embeddings": 4096,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "tie_word_embeddings": false,
  "torch_dtype": "float16",
  "transformers_version": "4.32.0.dev0",
  "use_cache": true,
  "vocab_size": 32000,
  "custom_nested": {"keep": [1, 2.5, "x"], "order": {"z": 1, "a": 2}}
})";

LlamaConfig MustParse(const std::string& text) {
  auto config = ParseLlamaConfig(text, "config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : LlamaConfig{};
}

absl::Status ParseError(const std::string& text) {
  return ParseLlamaConfig(text, "config.json").status();
}

std::string Edit(const char* base, const std::string& key, const nlohmann::json& value) {
  auto json = nlohmann::ordered_json::parse(base);
  if (value.is_discarded()) {
    json.erase(key);
  } else {
    json[key] = value;
  }
  return json.dump();
}

TEST(ConfigTest, ReadsLlama2SevenBAndCountsItsParameters) {
  LlamaConfig c = MustParse(kLlama2);
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 32);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::kNone);
  EXPECT_EQ(c.torch_dtype, DType::kF16);
  EXPECT_EQ(c.TotalParameters(), 6'738'415'616);  // LLaMA-2-7B as transformers counts it.
}

TEST(ConfigTest, AppliesTransformersDefaults) {
  LlamaConfig c = MustParse(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
      "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2})");
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(ConfigTest, ReadsMistralWithSlidingWindowAndGqa) {
  LlamaConfig c = MustParse(R"({"architectures": ["MistralForCausalLM"], "vocab_size": 32000,
      "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
      "num_attention_heads": 32, "num_key_value_heads": 8, "sliding_window": 4096,
      "rope_theta": 1000000.0})");
  EXPECT_EQ(c.architecture, Architecture::kMistral);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
}

TEST(ConfigTest, ReadsLinearAndLlama3RopeScalingAndExplicitHeadDim) {
  LlamaConfig linear =
      MustParse(Edit(kLlama2, "rope_scaling", {{"type", "linear"}, {"factor", 4.0}}));
  EXPECT_EQ(linear.rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_DOUBLE_EQ(linear.rope_scaling.factor, 4.0);
  LlamaConfig llama3 = MustParse(Edit(kLlama2, "rope_scaling",
                                      {{"rope_type", "llama3"},
                                       {"factor", 8.0},
                                       {"low_freq_factor", 1.0},
                                       {"high_freq_factor", 4.0},
                                       {"original_max_position_embeddings", 8192}}));
  EXPECT_EQ(llama3.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(llama3.rope_scaling.original_max_position_embeddings, 8192);
  LlamaConfig head_dim = MustParse(Edit(kLlama2, "head_dim", 64));
  EXPECT_EQ(head_dim.head_dim, 64);
}

TEST(ConfigTest, RewritingKeepsUnknownKeysVerbatimAndInOrder) {
  LlamaConfig c = MustParse(kLlama2);
  c.num_hidden_layers = 40;
  c.torch_dtype = DType::kBF16;
  auto original = nlohmann::ordered_json::parse(kLlama2);
  auto rewritten = nlohmann::ordered_json::parse(SerializeLlamaConfig(c));
  EXPECT_EQ(rewritten["num_hidden_layers"], 40);
  EXPECT_EQ(rewritten["torch_dtype"], "bfloat16");
  rewritten["num_hidden_layers"] = original["num_hidden_layers"];
  rewritten["torch_dtype"] = original["torch_dtype"];
  EXPECT_EQ(rewritten, original);  // Same keys, values and order.
  EXPECT_EQ(rewritten.dump(), original.dump());
}

TEST(ConfigTest, RefusesWhatItCannotRunNamingTheField) {
  struct Case {
    std::string text;
    const char* message;
  };
  const Case cases[] = {
      {"{", "not valid JSON"},
      {Edit(kLlama2, "architectures", {"GPT2LMHeadModel"}), "'GPT2LMHeadModel' is not supported"},
      {Edit(kLlama2, "hidden_size", nlohmann::json::value_t::discarded),
       "'hidden_size' is missing"},
      {Edit(kLlama2, "hidden_size", "4096"), "'hidden_size' must be a positive integer"},
      {Edit(kLlama2, "num_key_value_heads", 5), "'num_key_value_heads' (5) must divide"},
      {Edit(kLlama2, "hidden_size", 4097), "'hidden_size' (4097) is not a multiple"},
      {Edit(kLlama2, "hidden_act", "gelu"), "'hidden_act' must be \"silu\""},
      {Edit(kLlama2, "rms_norm_eps", -1), "'rms_norm_eps' must be a positive number"},
      {Edit(kLlama2, "rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}),
       "rope_scaling type 'yarn' is not supported"},
      {Edit(kLlama2, "rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}}),
       "'low_freq_factor' is missing"},
      {Edit(kLlama2, "tie_word_embeddings", 1), "'tie_word_embeddings' must be true or false"},
  };
  for (const Case& c : cases) {
    absl::Status status = ParseError(c.text);
    EXPECT_FALSE(status.ok()) << c.message;
    EXPECT_THAT(std::string(status.message()), HasSubstr("config.json")) << c.message;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.message));
  }
}

}  // namespace
}  // namespace llamapro
