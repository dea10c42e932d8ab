// Randomly initialised LLaMA/Mistral checkpoints in Hugging Face layout, for
// demos, tests and benchmarks (no real model needs downloading).
#ifndef LLAMAPRO_MODEL_SYNTH_H_
#define LLAMAPRO_MODEL_SYNTH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"
#include "model/config.h"

namespace llamapro {

struct SynthSpec {
  Architecture architecture = Architecture::kLlama;
  int64_t vocab_size = 512;
  int64_t hidden_size = 64;
  int64_t intermediate_size = 172;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 0;  // 0: hidden_size / num_attention_heads (written only when set).
  int64_t max_position_embeddings = 256;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;
  bool mlp_bias = false;
  int64_t sliding_window = 0;  // Mistral only.
  DType dtype = DType::kBF16;
  uint64_t seed = 0;
  double init_std = 0.02;  // Of the uniform weight distribution.
};

// Named shapes: "tiny" (the default above), "llama2-7b", "tinyllama-1.1b",
// "mistral-7b". `scale` multiplies hidden, FFN and vocabulary sizes (rounded
// to keep heads even), so bytes scale roughly with scale^2.
absl::StatusOr<SynthSpec> SynthPreset(absl::string_view name, double scale);
std::vector<std::string> SynthPresetNames();

// Parameters and bytes the spec will produce.
LlamaConfig SynthConfig(const SynthSpec& spec);

struct SynthProgress {
  int64_t tensors_done = 0, tensors_total = 0;
  uint64_t bytes_done = 0, bytes_total = 0;
  double seconds = 0;
};

// Writes config.json, generation_config.json and weights (sharded at
// `shard_bytes`) into `out_dir` through a staging directory. Values are a
// pure function of (seed, tensor name): linear weights uniform with standard
// deviation init_std, norm weights around 1, biases small. Refuses an existing
// out_dir unless `force`.
absl::Status WriteSyntheticCheckpoint(const SynthSpec& spec, const std::string& out_dir,
                                      uint64_t shard_bytes, bool force,
                                      const std::function<void(const SynthProgress&)>& progress);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_SYNTH_H_
