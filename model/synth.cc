#include "model/synth.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "model/checkpoint.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

int64_t RoundTo(double value, int64_t multiple) {
  return std::max<int64_t>(multiple,
                           static_cast<int64_t>(std::llround(value / multiple)) * multiple);
}

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t HashName(absl::string_view name, uint64_t seed) {
  uint64_t h = 0xcbf29ce484222325ull ^ seed;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

// How a tensor is initialised: value = center + half_width * u, u uniform in [-1, 1).
struct Init {
  float center;
  float half_width;
};

Init InitFor(const std::string& name, const SynthSpec& spec) {
  const float uniform_std = static_cast<float>(spec.init_std * std::sqrt(3.0));
  // Norm weights near 1 (not exactly 1, so tests see them copied, not reset).
  if (name.find("norm") != std::string::npos) return {1.0f, 0.1f};
  return {0.0f, uniform_std};
}

nlohmann::ordered_json ConfigJson(const SynthSpec& spec) {
  const bool mistral = spec.architecture == Architecture::kMistral;
  nlohmann::ordered_json json;
  json["architectures"] = {mistral ? "MistralForCausalLM" : "LlamaForCausalLM"};
  json["model_type"] = mistral ? "mistral" : "llama";
  json["vocab_size"] = spec.vocab_size;
  json["hidden_size"] = spec.hidden_size;
  json["intermediate_size"] = spec.intermediate_size;
  json["num_hidden_layers"] = spec.num_hidden_layers;
  json["num_attention_heads"] = spec.num_attention_heads;
  json["num_key_value_heads"] = spec.num_key_value_heads;
  if (spec.head_dim > 0) json["head_dim"] = spec.head_dim;
  json["hidden_act"] = "silu";
  json["max_position_embeddings"] = spec.max_position_embeddings;
  json["initializer_range"] = spec.init_std;
  json["rms_norm_eps"] = spec.rms_norm_eps;
  json["rope_theta"] = spec.rope_theta;
  json["rope_scaling"] = nullptr;
  if (!mistral) {
    json["attention_bias"] = spec.attention_bias;
    json["mlp_bias"] = spec.mlp_bias;
  } else {
    json["sliding_window"] =
        spec.sliding_window > 0 ? nlohmann::ordered_json(spec.sliding_window) : nullptr;
  }
  json["tie_word_embeddings"] = spec.tie_word_embeddings;
  json["bos_token_id"] = 1;
  json["eos_token_id"] = 2;
  json["torch_dtype"] = std::string(TorchDTypeName(spec.dtype));
  json["use_cache"] = true;
  return json;
}

}  // namespace

std::vector<std::string> SynthPresetNames() {
  return {"tiny", "llama2-7b", "tinyllama-1.1b", "mistral-7b"};
}

absl::StatusOr<SynthSpec> SynthPreset(absl::string_view name, double scale) {
  if (!(scale > 0) || scale > 16) {
    return absl::InvalidArgumentError(absl::StrCat("--scale ", scale, " must be in (0, 16]"));
  }
  SynthSpec spec;
  if (name == "tiny") {
    // The defaults.
  } else if (name == "llama2-7b") {
    spec.vocab_size = 32000;
    spec.hidden_size = 4096;
    spec.intermediate_size = 11008;
    spec.num_hidden_layers = 32;
    spec.num_attention_heads = 32;
    spec.num_key_value_heads = 32;
    spec.max_position_embeddings = 4096;
    spec.rms_norm_eps = 1e-5;
  } else if (name == "tinyllama-1.1b") {
    spec.vocab_size = 32000;
    spec.hidden_size = 2048;
    spec.intermediate_size = 5632;
    spec.num_hidden_layers = 22;
    spec.num_attention_heads = 32;
    spec.num_key_value_heads = 4;
    spec.max_position_embeddings = 2048;
    spec.rms_norm_eps = 1e-5;
  } else if (name == "mistral-7b") {
    spec.architecture = Architecture::kMistral;
    spec.vocab_size = 32000;
    spec.hidden_size = 4096;
    spec.intermediate_size = 14336;
    spec.num_hidden_layers = 32;
    spec.num_attention_heads = 32;
    spec.num_key_value_heads = 8;
    spec.max_position_embeddings = 32768;
    spec.sliding_window = 4096;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown preset '", name, "'; choose tiny, llama2-7b, tinyllama-1.1b or mistral-7b"));
  }
  if (scale != 1.0) {
    // Keep head_dim even: hidden a multiple of 2 * heads.
    spec.hidden_size = RoundTo(spec.hidden_size * scale, 2 * spec.num_attention_heads);
    spec.intermediate_size = RoundTo(spec.intermediate_size * scale, 16);
    spec.vocab_size = RoundTo(spec.vocab_size * scale, 64);
  }
  return spec;
}

LlamaConfig SynthConfig(const SynthSpec& spec) {
  auto config = ParseLlamaConfig(ConfigJson(spec).dump(), "synthetic config");
  LP_CHECK(config.ok(), "synthetic specs always produce a valid config");
  return *std::move(config);
}

absl::Status WriteSyntheticCheckpoint(const SynthSpec& spec, const std::string& out_dir,
                                      uint64_t shard_bytes, bool force,
                                      const std::function<void(const SynthProgress&)>& progress) {
  if (!IsModelFloat(spec.dtype))
    return absl::InvalidArgumentError("dtype must be f32, bf16 or f16");
  const std::string out = AbsolutePath(out_dir);
  if (PathExists(out) && !force) {
    return absl::AlreadyExistsError(
        absl::StrCat(out, " already exists (use --force to replace it)"));
  }
  const nlohmann::ordered_json config_json = ConfigJson(spec);
  LP_ASSIGN_OR_RETURN(LlamaConfig config, ParseLlamaConfig(config_json.dump(), "synthetic config"));

  std::vector<TensorSpec> specs;
  for (const ExpectedTensor& t : ExpectedTensors(config))
    specs.push_back({t.name, spec.dtype, t.shape});

  LP_ASSIGN_OR_RETURN(auto staging, StagingDir::Create(out));
  LP_ASSIGN_OR_RETURN(auto writer, CheckpointWriter::Create(staging->path(), specs, shard_bytes));
  SynthProgress state;
  state.tensors_total = static_cast<int64_t>(specs.size());
  state.bytes_total = writer->TotalBytes();
  constexpr size_t kChunk = 1u << 20;
  std::vector<float> values(kChunk);
  std::vector<uint8_t> encoded(kChunk * DTypeSize(spec.dtype));
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  for (size_t i = 0; i < specs.size(); ++i) {
    LP_RETURN_IF_ERROR(writer->BeginTensor(i));
    const Init init = InitFor(specs[i].name, spec);
    uint64_t state_rng = HashName(specs[i].name, spec.seed);
    const uint64_t elements = specs[i].NumBytes() / DTypeSize(spec.dtype);
    for (uint64_t done = 0; done < elements; done += kChunk) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, elements - done));
      for (size_t k = 0; k < n; k += 4) {
        uint64_t bits = SplitMix64(&state_rng);
        for (size_t m = 0; m < 4 && k + m < n; ++m) {
          // 16 random bits -> u in [-1, 1).
          const float u =
              static_cast<float>(static_cast<int32_t>(bits & 0xffff) - 32768) / 32768.0f;
          values[k + m] = init.center + init.half_width * u;
          bits >>= 16;
        }
      }
      ConvertFromF32(values.data(), n, spec.dtype, encoded.data());
      LP_RETURN_IF_ERROR(writer->Append(encoded.data(), n * DTypeSize(spec.dtype)));
      state.bytes_done += n * DTypeSize(spec.dtype);
      auto now = std::chrono::steady_clock::now();
      if (progress && now - last_report > std::chrono::milliseconds(100)) {
        last_report = now;
        state.seconds = std::chrono::duration<double>(now - start).count();
        progress(state);
      }
    }
    ++state.tensors_done;
  }
  LP_RETURN_IF_ERROR(writer->Finish());
  state.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (progress) progress(state);
  LP_RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(staging->path(), kConfigFile), config_json.dump(2) + "\n"));
  nlohmann::ordered_json generation = {
      {"bos_token_id", 1}, {"eos_token_id", 2}, {"do_sample", false}};
  LP_RETURN_IF_ERROR(WriteFileAtomic(JoinPath(staging->path(), "generation_config.json"),
                                     generation.dump(2) + "\n"));
  return staging->Commit(force);
}

}  // namespace llamapro
