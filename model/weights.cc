#include "model/weights.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

constexpr absl::string_view kLayerPrefix = "model.layers.";

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status LoadInto(const CheckpointReader& reader, const std::string& name,
                      std::optional<DType> round_through, std::vector<float>* out) {
  LP_RETURN_IF_ERROR(reader.ReadF32(name, out));
  if (round_through && *round_through != DType::kF32) {
    std::vector<uint16_t> narrow(out->size());
    ConvertFromF32(out->data(), out->size(), *round_through, narrow.data());
    ConvertToF32(narrow.data(), *round_through, out->size(), out->data());
  }
  return absl::OkStatus();
}

}  // namespace

std::string LayerTensorName(int64_t layer, absl::string_view suffix) {
  return absl::StrCat(kLayerPrefix, layer, ".", suffix);
}

std::optional<std::pair<int64_t, std::string>> ParseLayerTensorName(absl::string_view name) {
  if (!absl::StartsWith(name, kLayerPrefix)) return std::nullopt;
  absl::string_view rest = name.substr(kLayerPrefix.size());
  size_t dot = rest.find('.');
  if (dot == absl::string_view::npos || dot == 0) return std::nullopt;
  int64_t layer = 0;
  absl::string_view digits = rest.substr(0, dot);
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  if (!absl::SimpleAtoi(digits, &layer)) return std::nullopt;
  return std::make_pair(layer, std::string(rest.substr(dot + 1)));
}

bool IsZeroedInNewBlock(absl::string_view suffix) {
  return suffix == "self_attn.o_proj.weight" || suffix == "self_attn.o_proj.bias" ||
         suffix == "mlp.down_proj.weight" || suffix == "mlp.down_proj.bias";
}

std::vector<ExpectedTensor> ExpectedBlockTensors(const LlamaConfig& config, int64_t layer) {
  const int64_t c = config.hidden_size;
  const int64_t q = config.num_attention_heads * config.head_dim;
  const int64_t kv = config.num_key_value_heads * config.head_dim;
  const int64_t f = config.intermediate_size;
  std::vector<ExpectedTensor> out;
  auto add = [&](absl::string_view suffix, std::vector<int64_t> shape) {
    out.push_back({LayerTensorName(layer, suffix), std::move(shape)});
  };
  add("input_layernorm.weight", {c});
  add("self_attn.q_proj.weight", {q, c});
  add("self_attn.k_proj.weight", {kv, c});
  add("self_attn.v_proj.weight", {kv, c});
  add("self_attn.o_proj.weight", {c, q});
  if (config.attention_bias) {
    add("self_attn.q_proj.bias", {q});
    add("self_attn.k_proj.bias", {kv});
    add("self_attn.v_proj.bias", {kv});
    add("self_attn.o_proj.bias", {c});
  }
  add("post_attention_layernorm.weight", {c});
  add("mlp.gate_proj.weight", {f, c});
  add("mlp.up_proj.weight", {f, c});
  add("mlp.down_proj.weight", {c, f});
  if (config.mlp_bias) {
    add("mlp.gate_proj.bias", {f});
    add("mlp.up_proj.bias", {f});
    add("mlp.down_proj.bias", {c});
  }
  return out;
}

std::vector<ExpectedTensor> ExpectedTensors(const LlamaConfig& config) {
  std::vector<ExpectedTensor> out;
  out.push_back({kEmbedTokens, {config.vocab_size, config.hidden_size}});
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    for (ExpectedTensor& t : ExpectedBlockTensors(config, layer)) out.push_back(std::move(t));
  }
  out.push_back({kFinalNorm, {config.hidden_size}});
  if (!config.tie_word_embeddings)
    out.push_back({kLmHead, {config.vocab_size, config.hidden_size}});
  return out;
}

absl::Status ValidateCheckpoint(const LlamaConfig& config, const CheckpointReader& reader) {
  for (const ExpectedTensor& expected : ExpectedTensors(config)) {
    auto ref = reader.Find(expected.name);
    if (!ref) {
      return absl::InvalidArgumentError(absl::StrCat(
          reader.dir(), ": tensor '", expected.name,
          "' is missing (config.json: ", config.num_hidden_layers,
          " layers, attention_bias=", config.attention_bias, ", mlp_bias=", config.mlp_bias,
          ", tie_word_embeddings=", config.tie_word_embeddings, ")"));
    }
    const TensorInfo& info = *ref->info;
    if (info.shape != expected.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          ref->file->path(), ": tensor '", expected.name, "' has shape ", ShapeString(info.shape),
          " but config.json implies ", ShapeString(expected.shape)));
    }
    if (!IsModelFloat(info.dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(ref->file->path(), ": tensor '", expected.name,
                                                     "' has dtype ", DTypeName(info.dtype),
                                                     "; expected F32, F16 or BF16"));
    }
  }
  for (const std::string& name : reader.names()) {
    auto layer = ParseLayerTensorName(name);
    if (layer && (layer->first < 0 || layer->first >= config.num_hidden_layers)) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader.dir(), ": tensor '", name, "' belongs to layer ", layer->first,
                       " but config.json has num_hidden_layers=", config.num_hidden_layers));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<BlockWeights> LoadBlockWeights(const CheckpointReader& reader,
                                              const LlamaConfig& config, int64_t layer,
                                              std::optional<DType> round_through) {
  BlockWeights w;
  auto load = [&](absl::string_view suffix, std::vector<float>* out) {
    return LoadInto(reader, LayerTensorName(layer, suffix), round_through, out);
  };
  LP_RETURN_IF_ERROR(load("input_layernorm.weight", &w.input_norm));
  LP_RETURN_IF_ERROR(load("self_attn.q_proj.weight", &w.q_proj));
  LP_RETURN_IF_ERROR(load("self_attn.k_proj.weight", &w.k_proj));
  LP_RETURN_IF_ERROR(load("self_attn.v_proj.weight", &w.v_proj));
  LP_RETURN_IF_ERROR(load("self_attn.o_proj.weight", &w.o_proj));
  if (config.attention_bias) {
    LP_RETURN_IF_ERROR(load("self_attn.q_proj.bias", &w.q_bias));
    LP_RETURN_IF_ERROR(load("self_attn.k_proj.bias", &w.k_bias));
    LP_RETURN_IF_ERROR(load("self_attn.v_proj.bias", &w.v_bias));
    LP_RETURN_IF_ERROR(load("self_attn.o_proj.bias", &w.o_bias));
  }
  LP_RETURN_IF_ERROR(load("post_attention_layernorm.weight", &w.post_norm));
  LP_RETURN_IF_ERROR(load("mlp.gate_proj.weight", &w.gate_proj));
  LP_RETURN_IF_ERROR(load("mlp.up_proj.weight", &w.up_proj));
  LP_RETURN_IF_ERROR(load("mlp.down_proj.weight", &w.down_proj));
  if (config.mlp_bias) {
    LP_RETURN_IF_ERROR(load("mlp.gate_proj.bias", &w.gate_bias));
    LP_RETURN_IF_ERROR(load("mlp.up_proj.bias", &w.up_bias));
    LP_RETURN_IF_ERROR(load("mlp.down_proj.bias", &w.down_bias));
  }
  return w;
}

absl::StatusOr<HeadWeights> LoadHeadWeights(const CheckpointReader& reader,
                                            const LlamaConfig& config,
                                            std::optional<DType> round_through) {
  HeadWeights w;
  LP_RETURN_IF_ERROR(LoadInto(reader, kEmbedTokens, round_through, &w.embed));
  LP_RETURN_IF_ERROR(LoadInto(reader, kFinalNorm, round_through, &w.final_norm));
  if (!config.tie_word_embeddings) {
    LP_RETURN_IF_ERROR(LoadInto(reader, kLmHead, round_through, &w.lm_head));
  }
  return w;
}

}  // namespace llamapro
