#include "model/llama_params.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cpu/blas.h"
#include "model/weights.h"

namespace llamapro {
namespace {

absl::Status Load(const CheckpointReader& reader, const std::string& name,
                  std::vector<int64_t> shape, bool decay, Parameter* out,
                  TensorParallelShard shard = {}) {
  auto ref = reader.Find(name);
  if (!ref)
    return absl::NotFoundError(absl::StrCat(reader.dir(), ": tensor '", name, "' is missing"));
  out->name = name;
  out->shape = std::move(shape);
  out->source_dtype = ref->info->dtype;
  out->decay = decay;
  out->trainable = false;
  const int dim = shard.size > 1 ? TensorParallelSplitDim(name) : -1;
  if (dim < 0) return reader.ReadF32(name, &out->value);
  out->full_shape = out->shape;
  out->split_dim = dim;
  out->split_begin = SliceBegin(out->full_shape[dim], shard);
  out->shape[dim] = out->full_shape[dim] / shard.size;
  return reader.ReadF32Slice(name, dim, out->split_begin, out->shape[dim], &out->value);
}

}  // namespace

std::vector<Parameter*> BlockParams::All() {
  std::vector<Parameter*> out;
  for (Parameter* p :
       {&input_norm, &q_proj, &k_proj, &v_proj, &o_proj, &q_bias, &k_bias, &v_bias, &o_bias,
        &post_norm, &gate_proj, &up_proj, &down_proj, &gate_bias, &up_bias, &down_bias}) {
    if (!p->value.empty()) out.push_back(p);
  }
  for (Parameter* p : {&expert_gate, &expert_up, &expert_down, &expert_mix}) {
    if (!p->value.empty()) out.push_back(p);
  }
  for (LoraAdapter& adapter : lora) {
    if (adapter.present()) {
      out.push_back(&adapter.a);
      out.push_back(&adapter.b);
    }
  }
  return out;
}

const Parameter& BlockParams::LoraBase(int t) const {
  const Parameter* bases[kLoraTargets] = {&q_proj,    &k_proj,  &v_proj,   &o_proj,
                                          &gate_proj, &up_proj, &down_proj};
  return *bases[t];
}

Parameter& BlockParams::LoraBase(int t) {
  return const_cast<Parameter&>(static_cast<const BlockParams&>(*this).LoraBase(t));
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

std::vector<Parameter*> LlamaParams::Slots() {
  std::vector<Parameter*> out = {&embed};
  for (BlockParams& b : blocks) {
    for (Parameter* p :
         {&b.input_norm, &b.q_proj,      &b.k_proj,    &b.v_proj,      &b.o_proj,
          &b.q_bias,     &b.k_bias,      &b.v_bias,    &b.o_bias,      &b.post_norm,
          &b.gate_proj,  &b.up_proj,     &b.down_proj, &b.gate_bias,   &b.up_bias,
          &b.down_bias,  &b.expert_gate, &b.expert_up, &b.expert_down, &b.expert_mix}) {
      out.push_back(p);
    }
    for (LoraAdapter& l : b.lora) {
      out.push_back(&l.a);
      out.push_back(&l.b);
    }
  }
  out.push_back(&final_norm);
  out.push_back(&lm_head);
  return out;
}

int TensorParallelSplitDim(const std::string& name) {
  for (const char* suffix :
       {"q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight",
        "q_proj.bias", "k_proj.bias", "v_proj.bias", "gate_proj.bias", "up_proj.bias",
        "embed_tokens.weight", "lm_head.weight"}) {
    if (absl::EndsWith(name, suffix)) return 0;
  }
  for (const char* suffix : {"o_proj.weight", "down_proj.weight"}) {
    if (absl::EndsWith(name, suffix)) return 1;
  }
  return -1;
}

absl::Status CheckTensorParallel(const LlamaConfig& config, int size) {
  if (size < 1) return absl::InvalidArgumentError(absl::StrCat("tp must be >= 1, got ", size));
  if (size == 1) return absl::OkStatus();
  auto divides = [&](const char* what, int64_t n) -> absl::Status {
    if (n % size == 0) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("tp ", size, " does not divide the model's ", what, " (", n, ")"));
  };
  LP_RETURN_IF_ERROR(divides("num_key_value_heads", config.num_key_value_heads));
  LP_RETURN_IF_ERROR(divides("num_attention_heads", config.num_attention_heads));
  LP_RETURN_IF_ERROR(divides("intermediate_size", config.intermediate_size));
  LP_RETURN_IF_ERROR(divides("vocab_size", config.vocab_size));
  if (config.moe_experts > 0) {
    return absl::InvalidArgumentError(
        "tensor parallelism does not split MoE models (tp must be 1)");
  }
  return absl::OkStatus();
}

namespace {
int64_t ShapeElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

void ExtractSlice(const Parameter& p, const float* full, float* out) {
  const int64_t local = ShapeElements(p.shape);
  if (p.split_dim < 0) {
    std::copy(full, full + local, out);
    return;
  }
  const std::vector<int64_t>& fs = p.FullShape();
  const int64_t cols = fs.size() == 2 ? fs[1] : 1;
  if (p.split_dim == 0) {
    std::copy(full + p.split_begin * cols, full + p.split_begin * cols + local, out);
    return;
  }
  const int64_t width = p.shape[1];
  for (int64_t r = 0; r < fs[0]; ++r) {
    std::copy(full + r * cols + p.split_begin, full + r * cols + p.split_begin + width,
              out + r * width);
  }
}

void PlaceSlice(const Parameter& p, const float* slice, float* full) {
  const int64_t local = ShapeElements(p.shape);
  if (p.split_dim < 0) {
    std::copy(slice, slice + local, full);
    return;
  }
  const std::vector<int64_t>& fs = p.FullShape();
  const int64_t cols = fs.size() == 2 ? fs[1] : 1;
  if (p.split_dim == 0) {
    std::copy(slice, slice + local, full + p.split_begin * cols);
    return;
  }
  const int64_t width = p.shape[1];
  for (int64_t r = 0; r < fs[0]; ++r) {
    std::copy(slice + r * width, slice + (r + 1) * width, full + r * cols + p.split_begin);
  }
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
                                            const LlamaConfig& config, TensorParallelShard shard) {
  LP_RETURN_IF_ERROR(ValidateCheckpoint(config, reader));
  LP_RETURN_IF_ERROR(CheckTensorParallel(config, shard.size));
  LlamaParams params;
  params.config = config;
  const int64_t c = config.hidden_size;
  LP_RETURN_IF_ERROR(
      Load(reader, kEmbedTokens, {config.vocab_size, c}, true, &params.embed, shard));
  LP_RETURN_IF_ERROR(Load(reader, kFinalNorm, {c}, false, &params.final_norm));
  if (!config.tie_word_embeddings) {
    LP_RETURN_IF_ERROR(Load(reader, kLmHead, {config.vocab_size, c}, true, &params.lm_head, shard));
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
      LP_RETURN_IF_ERROR(Load(reader, t.name, t.shape, is_matrix, target, shard));
    }
    if (config.moe_experts > 0) {
      const int64_t c = config.hidden_size, f = config.intermediate_size;
      LP_RETURN_IF_ERROR(Load(reader, LayerTensorName(layer, "mlp.experts.1.gate_proj.weight"),
                              {f, c}, true, &b.expert_gate));
      LP_RETURN_IF_ERROR(Load(reader, LayerTensorName(layer, "mlp.experts.1.up_proj.weight"),
                              {f, c}, true, &b.expert_up));
      LP_RETURN_IF_ERROR(Load(reader, LayerTensorName(layer, "mlp.experts.1.down_proj.weight"),
                              {c, f}, true, &b.expert_down));
      LP_RETURN_IF_ERROR(
          Load(reader, LayerTensorName(layer, "mlp.expert_mix"), {2}, false, &b.expert_mix));
    }
  }
  return params;
}

absl::Status AddMoeExperts(LlamaParams* params) {
  if (params->config.mlp_bias) {
    return absl::InvalidArgumentError("the MoE baseline does not support mlp_bias models");
  }
  for (Parameter* p : params->All()) p->SetTrainable(false);
  for (size_t layer = 0; layer < params->blocks.size(); ++layer) {
    BlockParams& b = params->blocks[layer];
    if (!b.moe()) {
      const auto copy = [&](const Parameter& from, const char* suffix, Parameter* to) {
        *to = from;
        to->name = LayerTensorName(static_cast<int64_t>(layer), suffix);
        to->grad.clear();
      };
      copy(b.gate_proj, "mlp.experts.1.gate_proj.weight", &b.expert_gate);
      copy(b.up_proj, "mlp.experts.1.up_proj.weight", &b.expert_up);
      copy(b.down_proj, "mlp.experts.1.down_proj.weight", &b.expert_down);
      b.expert_mix.name = LayerTensorName(static_cast<int64_t>(layer), "mlp.expert_mix");
      b.expert_mix.shape = {2};
      b.expert_mix.source_dtype = DType::kF32;
      b.expert_mix.value.assign(2, 0.0f);
      b.expert_mix.decay = false;
    }
    for (Parameter* p : {&b.expert_gate, &b.expert_up, &b.expert_down, &b.expert_mix}) {
      p->SetTrainable(true);
    }
  }
  params->config.moe_experts = 2;
  return absl::OkStatus();
}

absl::Status AddLoraAdapters(const LoraSpec& spec, LlamaParams* params) {
  if (spec.rank < 1) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA rank must be >= 1, got ", spec.rank));
  }
  if (!(spec.alpha > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("LoRA alpha must be > 0, got ", spec.alpha));
  }
  if (spec.blocks.size() != params->blocks.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the LoRA spec names ", spec.blocks.size(),
                                                   " blocks; the model has ",
                                                   params->blocks.size()));
  }
  std::vector<int> targets;
  for (const std::string& name : spec.targets) {
    int t = 0;
    while (t < kLoraTargets && name != kLoraTargetNames[t]) ++t;
    if (t == kLoraTargets) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown LoRA target '", name,
                       "' (one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"));
    }
    targets.push_back(t);
  }
  if (targets.empty()) return absl::InvalidArgumentError("LoRA needs at least one target");
  if (std::find(spec.blocks.begin(), spec.blocks.end(), true) == spec.blocks.end()) {
    return absl::InvalidArgumentError("LoRA adapts no block");
  }
  for (Parameter* p : params->All()) p->SetTrainable(false);
  params->lora_rank = spec.rank;
  params->lora_alpha = spec.alpha;
  std::mt19937_64 rng(spec.seed ^ 0x4C6F5241ull);  // "LoRA"
  for (size_t layer = 0; layer < params->blocks.size(); ++layer) {
    if (!spec.blocks[layer]) continue;
    BlockParams& block = params->blocks[layer];
    for (int t : targets) {
      const Parameter& w = block.LoraBase(t);
      const int64_t out = w.shape[0], in = w.shape[1];
      const std::string prefix = w.name.substr(0, w.name.size() - std::string(".weight").size());
      LoraAdapter& adapter = block.lora[t];
      adapter.a.name = prefix + ".lora_A.weight";
      adapter.a.shape = {spec.rank, in};
      adapter.a.value.resize(spec.rank * in);
      std::uniform_real_distribution<float> init(-1.0f / std::sqrt(static_cast<float>(in)),
                                                 1.0f / std::sqrt(static_cast<float>(in)));
      for (float& v : adapter.a.value) v = init(rng);
      adapter.b.name = prefix + ".lora_B.weight";
      adapter.b.shape = {out, spec.rank};
      adapter.b.value.assign(out * spec.rank, 0.0f);
      adapter.a.decay = adapter.b.decay = true;
      adapter.a.SetTrainable(true);
      adapter.b.SetTrainable(true);
    }
  }
  return absl::OkStatus();
}

std::vector<float> MergedLoraWeight(const LlamaParams& params, int64_t layer, int t) {
  const BlockParams& block = params.blocks[layer];
  const Parameter& w = block.LoraBase(t);
  const LoraAdapter& adapter = block.lora[t];
  const int64_t out = w.shape[0], in = w.shape[1], r = adapter.a.shape[0];
  std::vector<float> merged = w.value;
  // merged[out, in] += scale * B[out, r] A[r, in]
  cpu::Sgemm(false, false, out, in, r, params.LoraScale(), adapter.b.value.data(), r,
             adapter.a.value.data(), in, 1.0f, merged.data(), in);
  return merged;
}

void MergeLoraAdapters(LlamaParams* params) {
  for (size_t layer = 0; layer < params->blocks.size(); ++layer) {
    BlockParams& block = params->blocks[layer];
    for (int t = 0; t < kLoraTargets; ++t) {
      if (!block.lora[t].present()) continue;
      block.LoraBase(t).value = MergedLoraWeight(*params, static_cast<int64_t>(layer), t);
      block.lora[t] = LoraAdapter();
    }
  }
  params->lora_rank = 0;
  params->lora_alpha = 0;
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
