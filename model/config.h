// config.json of a Hugging Face LlamaForCausalLM or MistralForCausalLM.
//
// Values follow transformers' semantics and defaults (LlamaConfig,
// MistralConfig). The parsed JSON is kept, so a rewritten config preserves
// every key this code does not know, verbatim and in order.
#ifndef LLAMAPRO_MODEL_CONFIG_H_
#define LLAMAPRO_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"
#include "nlohmann/json.hpp"

namespace llamapro {

inline constexpr char kConfigFile[] = "config.json";

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  // llama3 only:
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

enum class Architecture { kLlama, kMistral };

struct LlamaConfig {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;          // C
  int64_t intermediate_size = 0;    // F
  int64_t num_hidden_layers = 0;    // L
  int64_t num_attention_heads = 0;  // H
  int64_t num_key_value_heads = 0;  // Hkv
  int64_t head_dim = 0;             // D
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  int64_t sliding_window = 0;  // 0: full causal attention.
  // llamapro's MoE baseline (the paper's appendix H): with 2, every block's
  // MLP is two experts mixed by learned weights (config.json key
  // "llamapro_moe_experts"; tensors model.layers.N.mlp.experts.1.*_proj.weight
  // and model.layers.N.mlp.expert_mix). Only the training engine runs it.
  int64_t moe_experts = 0;
  std::optional<DType> torch_dtype;
  nlohmann::ordered_json json;  // The file as read.

  absl::string_view ArchitectureName() const;
  // Parameters of one decoder block.
  int64_t BlockParameters() const;
  int64_t TotalParameters() const;
};

// Parses config.json text; `source` names the file in errors. Refuses
// architectures other than Llama/Mistral, unsupported activations and RoPE
// scaling types, and inconsistent sizes, naming the field.
absl::StatusOr<LlamaConfig> ParseLlamaConfig(absl::string_view text, absl::string_view source);
// Reads `<dir>/config.json`.
absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& dir);

// config.json text for `config`: its original JSON with num_hidden_layers and
// torch_dtype taken from the struct; everything else kept verbatim.
std::string SerializeLlamaConfig(const LlamaConfig& config);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_CONFIG_H_
