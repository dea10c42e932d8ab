#include "model/config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

using OrderedJson = nlohmann::ordered_json;

class FieldReader {
 public:
  FieldReader(const OrderedJson& json, absl::string_view source)
      : json_(json), source_(std::string(source)) {}

  absl::Status Error(absl::string_view field, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": '", field, "' ", message));
  }

  bool Has(const char* field) const {
    auto it = json_.find(field);
    return it != json_.end() && !it->is_null();
  }

  // A required positive integer.
  absl::StatusOr<int64_t> PositiveInt(const char* field) const {
    if (!Has(field)) return Error(field, "is missing");
    return PositiveIntOr(field, 0);
  }

  absl::StatusOr<int64_t> PositiveIntOr(const char* field, int64_t fallback) const {
    if (!Has(field)) return fallback;
    const OrderedJson& v = json_.at(field);
    if (!v.is_number_integer() || v.get<int64_t>() <= 0) {
      return Error(field, absl::StrCat("must be a positive integer, got ", v.dump()));
    }
    return v.get<int64_t>();
  }

  absl::StatusOr<double> PositiveNumberOr(const char* field, double fallback) const {
    if (!Has(field)) return fallback;
    const OrderedJson& v = json_.at(field);
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) {
      return Error(field, absl::StrCat("must be a positive number, got ", v.dump()));
    }
    return v.get<double>();
  }

  absl::StatusOr<bool> BoolOr(const char* field, bool fallback) const {
    if (!Has(field)) return fallback;
    const OrderedJson& v = json_.at(field);
    if (!v.is_boolean()) return Error(field, absl::StrCat("must be true or false, got ", v.dump()));
    return v.get<bool>();
  }

 private:
  const OrderedJson& json_;
  std::string source_;
};

absl::Status ParseRopeScaling(const OrderedJson& json, absl::string_view source, RopeScaling* out) {
  auto it = json.find("rope_scaling");
  if (it == json.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": 'rope_scaling' must be an object or null"));
  }
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (it->contains(key) && (*it)[key].is_string()) {
      type = (*it)[key].get<std::string>();
      break;
    }
  }
  FieldReader field(*it, absl::StrCat(source, " rope_scaling"));
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    out->type = RopeScalingType::kLinear;
    LP_ASSIGN_OR_RETURN(out->factor, field.PositiveNumberOr("factor", 0));
    if (out->factor == 0) return field.Error("factor", "is missing");
    return absl::OkStatus();
  }
  if (type == "llama3") {
    out->type = RopeScalingType::kLlama3;
    for (const char* key :
         {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (!field.Has(key)) return field.Error(key, "is missing (required for llama3 scaling)");
    }
    LP_ASSIGN_OR_RETURN(out->factor, field.PositiveNumberOr("factor", 0));
    LP_ASSIGN_OR_RETURN(out->low_freq_factor, field.PositiveNumberOr("low_freq_factor", 0));
    LP_ASSIGN_OR_RETURN(out->high_freq_factor, field.PositiveNumberOr("high_freq_factor", 0));
    LP_ASSIGN_OR_RETURN(out->original_max_position_embeddings,
                        field.PositiveIntOr("original_max_position_embeddings", 0));
    if (out->high_freq_factor <= out->low_freq_factor) {
      return field.Error("high_freq_factor", "must be larger than low_freq_factor");
    }
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": rope_scaling type '", type.empty() ? "(none given)" : type,
                   "' is not supported; supported: linear, llama3 (or null for none)"));
}

}  // namespace

absl::string_view LlamaConfig::ArchitectureName() const {
  return architecture == Architecture::kMistral ? "MistralForCausalLM" : "LlamaForCausalLM";
}

int64_t LlamaConfig::BlockParameters() const {
  const int64_t q = num_attention_heads * head_dim;
  const int64_t kv = num_key_value_heads * head_dim;
  int64_t n = hidden_size * q + 2 * hidden_size * kv + q * hidden_size;  // q, k, v, o
  if (attention_bias) n += q + 2 * kv + hidden_size;
  n += 3 * hidden_size * intermediate_size;  // gate, up, down
  if (mlp_bias) n += 2 * intermediate_size + hidden_size;
  n += 2 * hidden_size;  // Two RMSNorm weights.
  return n;
}

int64_t LlamaConfig::TotalParameters() const {
  int64_t n = vocab_size * hidden_size + num_hidden_layers * BlockParameters() + hidden_size;
  if (!tie_word_embeddings) n += vocab_size * hidden_size;
  return n;
}

absl::StatusOr<LlamaConfig> ParseLlamaConfig(absl::string_view text, absl::string_view source) {
  LlamaConfig config;
  try {
    config.json = OrderedJson::parse(text);
  } catch (const OrderedJson::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  const OrderedJson& json = config.json;
  if (!json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  FieldReader field(json, source);

  std::string model_type = json.value("model_type", "");
  std::string arch;
  if (json.contains("architectures") && json["architectures"].is_array() &&
      !json["architectures"].empty() && json["architectures"][0].is_string()) {
    arch = json["architectures"][0].get<std::string>();
  }
  if (arch == "LlamaForCausalLM" || (arch.empty() && model_type == "llama")) {
    config.architecture = Architecture::kLlama;
  } else if (arch == "MistralForCausalLM" || (arch.empty() && model_type == "mistral")) {
    config.architecture = Architecture::kMistral;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": architecture '", arch.empty() ? model_type : arch,
                     "' is not supported; supported: LlamaForCausalLM, MistralForCausalLM"));
  }
  const bool mistral = config.architecture == Architecture::kMistral;

  LP_ASSIGN_OR_RETURN(config.vocab_size, field.PositiveInt("vocab_size"));
  LP_ASSIGN_OR_RETURN(config.hidden_size, field.PositiveInt("hidden_size"));
  LP_ASSIGN_OR_RETURN(config.intermediate_size, field.PositiveInt("intermediate_size"));
  LP_ASSIGN_OR_RETURN(config.num_hidden_layers, field.PositiveInt("num_hidden_layers"));
  LP_ASSIGN_OR_RETURN(config.num_attention_heads, field.PositiveInt("num_attention_heads"));
  LP_ASSIGN_OR_RETURN(config.num_key_value_heads,
                      field.PositiveIntOr("num_key_value_heads", config.num_attention_heads));
  LP_ASSIGN_OR_RETURN(config.max_position_embeddings,
                      field.PositiveIntOr("max_position_embeddings", mistral ? 131072 : 2048));
  LP_ASSIGN_OR_RETURN(config.rms_norm_eps, field.PositiveNumberOr("rms_norm_eps", 1e-6));
  LP_ASSIGN_OR_RETURN(config.rope_theta, field.PositiveNumberOr("rope_theta", 10000.0));
  LP_ASSIGN_OR_RETURN(config.tie_word_embeddings, field.BoolOr("tie_word_embeddings", false));
  LP_ASSIGN_OR_RETURN(config.attention_bias, field.BoolOr("attention_bias", false));
  LP_ASSIGN_OR_RETURN(config.mlp_bias, field.BoolOr("mlp_bias", false));
  if (mistral && (config.attention_bias || config.mlp_bias)) {
    return absl::InvalidArgumentError(
        absl::StrCat(source,
                     ": MistralForCausalLM has no biases, but attention_bias or "
                     "mlp_bias is true"));
  }
  if (mistral) {
    LP_ASSIGN_OR_RETURN(config.sliding_window, field.PositiveIntOr("sliding_window", 0));
  }
  LP_ASSIGN_OR_RETURN(config.moe_experts, field.PositiveIntOr("llamapro_moe_experts", 0));
  if (config.moe_experts != 0 && config.moe_experts != 2) {
    return field.Error(
        "llamapro_moe_experts",
        absl::StrCat("must be 2 (the MoE baseline's experts), got ", config.moe_experts));
  }

  if (config.num_attention_heads % config.num_key_value_heads != 0) {
    return field.Error("num_key_value_heads", absl::StrCat("(", config.num_key_value_heads,
                                                           ") must divide num_attention_heads (",
                                                           config.num_attention_heads, ")"));
  }
  if (field.Has("head_dim")) {
    LP_ASSIGN_OR_RETURN(config.head_dim, field.PositiveInt("head_dim"));
  } else {
    if (config.hidden_size % config.num_attention_heads != 0) {
      return field.Error("hidden_size", absl::StrCat("(", config.hidden_size,
                                                     ") is not a multiple of num_attention_heads (",
                                                     config.num_attention_heads, ")"));
    }
    config.head_dim = config.hidden_size / config.num_attention_heads;
  }
  if (config.head_dim % 2 != 0) {
    return field.Error("head_dim",
                       absl::StrCat("(", config.head_dim, ") must be even for rotary embeddings"));
  }

  if (field.Has("hidden_act")) {
    const OrderedJson& act = json["hidden_act"];
    if (!act.is_string() || act.get<std::string>() != "silu") {
      return field.Error("hidden_act", absl::StrCat("must be \"silu\", got ", act.dump()));
    }
  }
  if (field.Has("torch_dtype")) {
    const OrderedJson& dtype = json["torch_dtype"];
    if (dtype.is_string()) {
      const std::string name = dtype.get<std::string>();
      for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
        if (TorchDTypeName(d) == name) config.torch_dtype = d;
      }
    }
  }
  LP_RETURN_IF_ERROR(ParseRopeScaling(json, source, &config.rope_scaling));
  return config;
}

absl::StatusOr<LlamaConfig> LoadLlamaConfig(const std::string& dir) {
  const std::string path = JoinPath(dir, kConfigFile);
  LP_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseLlamaConfig(text, path);
}

std::string SerializeLlamaConfig(const LlamaConfig& config) {
  OrderedJson json = config.json;
  json["num_hidden_layers"] = config.num_hidden_layers;
  if (config.moe_experts > 0) json["llamapro_moe_experts"] = config.moe_experts;
  if (config.torch_dtype) json["torch_dtype"] = std::string(TorchDTypeName(*config.torch_dtype));
  return json.dump(2) + "\n";
}

}  // namespace llamapro
