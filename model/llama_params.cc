#include "model/llama_params.h"

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "model/weights.h"

namespace llamapro {
namespace {

absl::Status Load(const CheckpointReader& reader, const std::string& name,
                  std::vector<int64_t> shape, bool decay, Parameter* out) {
  auto ref = reader.Find(name);
  if (!ref)
    return absl::NotFoundError(absl::StrCat(reader.dir(), ": tensor '", name, "' is missing"));
  out->name = name;
  out->shape = std::move(shape);
  out->source_dtype = ref->info->dtype;
  out->decay = decay;
  out->trainable = false;
  return reader.ReadF32(name, &out->value);
}

}  // namespace

std::vector<Parameter*> BlockParams::All() {
  std::vector<Parameter*> out;
  for (Parameter* p :
       {&input_norm, &q_proj, &k_proj, &v_proj, &o_proj, &q_bias, &k_bias, &v_bias, &o_bias,
        &post_norm, &gate_proj, &up_proj, &down_proj, &gate_bias, &up_bias, &down_bias}) {
    if (!p->value.empty()) out.push_back(p);
  }
  return out;
}

bool BlockParams::AnyTrainable() {
  for (Parameter* p : All()) {
    if (p->trainable) return true;
  }
  return false;
}

std::vector<Parameter*> LlamaParams::All() {
  std::vector<Parameter*> out = {&embed};
  for (BlockParams& block : blocks) {
    for (Parameter* p : block.All()) out.push_back(p);
  }
  out.push_back(&final_norm);
  if (!lm_head.value.empty()) out.push_back(&lm_head);
  return out;
}

std::vector<Parameter*> LlamaParams::Trainable() {
  std::vector<Parameter*> out;
  for (Parameter* p : All()) {
    if (p->trainable) out.push_back(p);
  }
  return out;
}

int64_t LlamaParams::TotalParameters() {
  int64_t n = 0;
  for (Parameter* p : All()) n += p->NumElements();
  return n;
}

int64_t LlamaParams::TrainableParameters() {
  int64_t n = 0;
  for (Parameter* p : Trainable()) n += p->NumElements();
  return n;
}

absl::StatusOr<LlamaParams> LoadLlamaParams(const CheckpointReader& reader,
                                            const LlamaConfig& config) {
  LP_RETURN_IF_ERROR(ValidateCheckpoint(config, reader));
  LlamaParams params;
  params.config = config;
  const int64_t c = config.hidden_size;
  LP_RETURN_IF_ERROR(Load(reader, kEmbedTokens, {config.vocab_size, c}, true, &params.embed));
  LP_RETURN_IF_ERROR(Load(reader, kFinalNorm, {c}, false, &params.final_norm));
  if (!config.tie_word_embeddings) {
    LP_RETURN_IF_ERROR(Load(reader, kLmHead, {config.vocab_size, c}, true, &params.lm_head));
  }
  params.blocks.resize(config.num_hidden_layers);
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    BlockParams& b = params.blocks[layer];
    std::vector<ExpectedTensor> expected = ExpectedBlockTensors(config, layer);
    for (const ExpectedTensor& t : expected) {
      const std::string suffix = ParseLayerTensorName(t.name)->second;
      Parameter* target = nullptr;
      if (suffix == "input_layernorm.weight") target = &b.input_norm;
      if (suffix == "self_attn.q_proj.weight") target = &b.q_proj;
      if (suffix == "self_attn.k_proj.weight") target = &b.k_proj;
      if (suffix == "self_attn.v_proj.weight") target = &b.v_proj;
      if (suffix == "self_attn.o_proj.weight") target = &b.o_proj;
      if (suffix == "self_attn.q_proj.bias") target = &b.q_bias;
      if (suffix == "self_attn.k_proj.bias") target = &b.k_bias;
      if (suffix == "self_attn.v_proj.bias") target = &b.v_bias;
      if (suffix == "self_attn.o_proj.bias") target = &b.o_bias;
      if (suffix == "post_attention_layernorm.weight") target = &b.post_norm;
      if (suffix == "mlp.gate_proj.weight") target = &b.gate_proj;
      if (suffix == "mlp.up_proj.weight") target = &b.up_proj;
      if (suffix == "mlp.down_proj.weight") target = &b.down_proj;
      if (suffix == "mlp.gate_proj.bias") target = &b.gate_bias;
      if (suffix == "mlp.up_proj.bias") target = &b.up_bias;
      if (suffix == "mlp.down_proj.bias") target = &b.down_bias;
      if (target == nullptr) {
        return absl::InternalError(absl::StrCat("unmapped block tensor ", t.name));
      }
      const bool is_matrix = t.shape.size() == 2;
      LP_RETURN_IF_ERROR(Load(reader, t.name, t.shape, is_matrix, target));
    }
  }
  return params;
}

absl::Status ApplyTrainableSet(const TrainableSet& set, LlamaParams* params) {
  if (set.blocks.size() != params->blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the trainable set names ", set.blocks.size(),
                                                   " blocks; the model has ",
                                                   params->blocks.size()));
  }
  if (params->config.tie_word_embeddings && set.lm_head != set.embeddings) {
    return absl::InvalidArgumentError(
        "this model ties lm_head to the embedding: train both or neither");
  }
  bool any = set.embeddings || set.final_norm || set.lm_head;
  for (size_t i = 0; i < set.blocks.size(); ++i) {
    for (Parameter* p : params->blocks[i].All()) p->SetTrainable(set.blocks[i]);
    any = any || set.blocks[i];
  }
  if (!any) return absl::InvalidArgumentError("nothing is trainable");
  params->embed.SetTrainable(set.embeddings);
  params->final_norm.SetTrainable(set.final_norm);
  if (!params->lm_head.value.empty()) params->lm_head.SetTrainable(set.lm_head);
  return absl::OkStatus();
}

}  // namespace llamapro
