#include "model/cuda_llama_train.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "kernels/cpu/reference.h"
#include "kernels/cuda/add.cuh"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/bias.cuh"
#include "kernels/cuda/cast.cuh"
#include "kernels/cuda/cross_entropy.cuh"
#include "kernels/cuda/device.h"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/rmsnorm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/silu_mul.cuh"
#include "kernels/dtype.h"
#include "model/cuda_status.h"
#include "model/rope.h"

namespace llamapro {

absl::string_view RecomputeName(Recompute mode) {
  switch (mode) {
    case Recompute::kNone:
      return "none";
    case Recompute::kAttention:
      return "attention";
    case Recompute::kFull:
      return "full";
  }
  return "unknown";
}

absl::StatusOr<Recompute> ParseRecompute(absl::string_view text) {
  for (Recompute mode : {Recompute::kNone, Recompute::kAttention, Recompute::kFull}) {
    if (text == RecomputeName(mode)) return mode;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("recompute '", text, "' is not one of none, attention, full"));
}

namespace {

// Every device buffer starts on a 256-byte boundary (cudaMalloc's alignment),
// so cuBLASLt sees the same alignments, hence the same plans, whichever
// recompute mode laid the buffers out.
constexpr int64_t kAlign = 256;
constexpr int64_t kAutoLogitsBytes = int64_t{256} << 20;

enum Kind { kWeights = 0, kMasters, kGradients, kActivations, kScratch, kKinds };

// Buffers are carved from one allocation per Kind; with a null base this only
// measures (PlanMemory; every pointer is then null).
class Arena {
 public:
  explicit Arena(char* base) : base_(base) {}
  template <typename T>
  T* Take(int64_t count) {
    if (count <= 0) return nullptr;
    const int64_t offset = size_;
    const int64_t bytes = count * static_cast<int64_t>(sizeof(T));
    size_ += (bytes + kAlign - 1) / kAlign * kAlign;
    return base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + offset);
  }
  int64_t size() const { return size_; }

 private:
  char* base_;
  int64_t size_ = 0;
};

// One model tensor on the device.
struct DeviceTensor {
  Parameter* param = nullptr;
  uint16_t* w = nullptr;    // bf16 copy the passes read.
  float* master = nullptr;  // fp32 master (trainable only).
  float* grad = nullptr;    // fp32 gradient (trainable only).
  int64_t n = 0;
};

struct BlockWeights {
  DeviceTensor input_norm, q, k, v, o, q_bias, k_bias, v_bias, o_bias, post_norm, gate, up, down,
      gate_bias, up_bias, down_bias;
};

// What a block's backward reads. Depending on the recompute mode some of
// these point at the shared work set (recomputed there in the backward).
struct BlockActs {
  uint16_t* x_in = nullptr;
  uint16_t* xn1 = nullptr;
  float* inv1 = nullptr;
  uint16_t* q = nullptr;
  uint16_t* k = nullptr;
  uint16_t* v = nullptr;
  uint16_t* attn = nullptr;
  float* lse = nullptr;
  uint16_t* x_mid = nullptr;
  uint16_t* xn2 = nullptr;
  float* inv2 = nullptr;
  uint16_t* gate = nullptr;
  uint16_t* up = nullptr;
};

// Sizes and frozen-aware decisions of a pass, from the params and options
// alone (no device).
struct Geometry {
  int64_t layers = 0, batch = 0, seq_len = 0, n = 0, c = 0, q = 0, kv = 0, f = 0, v = 0, d = 0;
  int64_t heads = 0, kv_heads = 0, lse = 0;
  bool for_training = false;
  Recompute recompute = Recompute::kNone;  // Effective (kNone when nothing is differentiated).
  int64_t lowest = 0;
  bool embed_grad = false;
  bool head_dx = false;    // The lm_head computes d(xn_final).
  bool head_grad = false;  // The lm_head (or tied embedding) trains.
  bool any_bias_grad = false;
  bool any_norm_grad = false;
  int64_t chunk_rows = 0;
};

int64_t ChunkRows(int64_t requested, int64_t n, int64_t v) {
  if (requested > 0) return std::min(requested, n);
  const int64_t rows = std::max<int64_t>(1, kAutoLogitsBytes / (v * 2));
  return std::min(rows, n);
}

Geometry MakeGeometry(const LlamaParams& params, const CudaPassOptions& options) {
  const LlamaConfig& config = params.config;
  Geometry g;
  g.layers = static_cast<int64_t>(params.blocks.size());
  g.batch = std::max<int64_t>(options.batch, 0);
  g.seq_len = std::max<int64_t>(options.seq_len, 0);
  g.n = g.batch * g.seq_len;
  g.c = config.hidden_size;
  g.d = config.head_dim;
  g.heads = config.num_attention_heads;
  g.kv_heads = config.num_key_value_heads;
  g.q = g.heads * g.d;
  g.kv = g.kv_heads * g.d;
  g.f = config.intermediate_size;
  g.v = config.vocab_size;
  g.lse = g.batch * g.heads * g.seq_len;
  g.for_training = options.for_training;
  g.embed_grad = options.for_training && params.embed.trainable;
  g.lowest = g.layers;
  if (g.embed_grad) {
    g.lowest = 0;
  } else if (options.for_training) {
    for (int64_t i = 0; i < g.layers; ++i) {
      const BlockParams& b = params.blocks[i];
      bool any = false;
      for (const Parameter* p :
           {&b.input_norm, &b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj, &b.q_bias, &b.k_bias,
            &b.v_bias, &b.o_bias, &b.post_norm, &b.gate_proj, &b.up_proj, &b.down_proj,
            &b.gate_bias, &b.up_bias, &b.down_bias}) {
        any = any || (p->trainable && !p->value.empty());
      }
      if (any) {
        g.lowest = i;
        break;
      }
    }
  }
  const Parameter& head = config.tie_word_embeddings ? params.embed : params.lm_head;
  g.head_dx = options.for_training && (g.lowest < g.layers || params.final_norm.trainable);
  g.head_grad = options.for_training && head.trainable;
  g.recompute = options.for_training && g.lowest < g.layers ? options.recompute : Recompute::kNone;
  for (int64_t i = g.lowest; options.for_training && i < g.layers; ++i) {
    const BlockParams& b = params.blocks[i];
    for (const Parameter* p :
         {&b.q_bias, &b.k_bias, &b.v_bias, &b.o_bias, &b.gate_bias, &b.up_bias, &b.down_bias}) {
      g.any_bias_grad = g.any_bias_grad || (p->trainable && !p->value.empty());
    }
    g.any_norm_grad = g.any_norm_grad || b.input_norm.trainable || b.post_norm.trainable;
  }
  g.any_norm_grad = g.any_norm_grad || (options.for_training && params.final_norm.trainable);
  g.chunk_rows = g.n > 0 && g.v > 0 ? ChunkRows(options.logits_chunk_rows, g.n, g.v) : 0;
  return g;
}

// Every buffer of a pass. Laid out by LayOut, which Create and PlanMemory
// share, so the plan is what Create allocates.
struct Layout {
  DeviceTensor embed, final_norm, lm_head;
  std::vector<BlockWeights> blocks;
  std::vector<BlockActs> saved;  // Indexed by layer; empty below the lowest differentiated block.
  BlockActs work;                // Blocks that keep nothing, and recomputation.
  uint16_t* x = nullptr;         // Residual stream of the blocks that keep nothing.
  uint16_t* x_final = nullptr;
  uint16_t* xn_final = nullptr;
  float* inv_final = nullptr;
  uint16_t* act = nullptr;
  uint16_t *dres = nullptr, *dxn = nullptr, *dtmp = nullptr;
  uint16_t *dq = nullptr, *dk = nullptr, *dv = nullptr, *dattn = nullptr, *dact = nullptr;
  float* attn_scratch = nullptr;
  float* norm_scratch = nullptr;
  float* bias_scratch = nullptr;
  uint16_t* logits = nullptr;
  float* loss = nullptr;
  int32_t* inputs = nullptr;
  int32_t* targets = nullptr;
  uint8_t* mask = nullptr;
  float* rope_cos = nullptr;
  float* rope_sin = nullptr;
  int64_t bytes[kKinds] = {};
};

// Calls visit(param, device tensor) for every present tensor, in
// LlamaParams::All() order.
template <typename Visit>
void ForEachTensor(const LlamaParams& params, Layout* l, Visit visit) {
  if (l->blocks.size() != params.blocks.size()) l->blocks.resize(params.blocks.size());
  visit(params.embed, &l->embed);
  for (size_t i = 0; i < params.blocks.size(); ++i) {
    const BlockParams& b = params.blocks[i];
    BlockWeights& w = l->blocks[i];
    const std::pair<const Parameter*, DeviceTensor*> pairs[] = {{&b.input_norm, &w.input_norm},
                                                                {&b.q_proj, &w.q},
                                                                {&b.k_proj, &w.k},
                                                                {&b.v_proj, &w.v},
                                                                {&b.o_proj, &w.o},
                                                                {&b.q_bias, &w.q_bias},
                                                                {&b.k_bias, &w.k_bias},
                                                                {&b.v_bias, &w.v_bias},
                                                                {&b.o_bias, &w.o_bias},
                                                                {&b.post_norm, &w.post_norm},
                                                                {&b.gate_proj, &w.gate},
                                                                {&b.up_proj, &w.up},
                                                                {&b.down_proj, &w.down},
                                                                {&b.gate_bias, &w.gate_bias},
                                                                {&b.up_bias, &w.up_bias},
                                                                {&b.down_bias, &w.down_bias}};
    for (const auto& [p, t] : pairs) {
      if (!p->value.empty()) visit(*p, t);
    }
  }
  visit(params.final_norm, &l->final_norm);
  if (!params.lm_head.value.empty()) visit(params.lm_head, &l->lm_head);
}

void LayOut(const LlamaParams& params, const Geometry& g, char* const base[kKinds], Layout* l) {
  Arena weights(base[kWeights]), masters(base[kMasters]), grads(base[kGradients]);
  Arena acts(base[kActivations]), scratch(base[kScratch]);
  l->blocks.assign(params.blocks.size(), BlockWeights{});
  ForEachTensor(params, l, [&](const Parameter& p, DeviceTensor* t) {
    t->param = const_cast<Parameter*>(&p);
    t->n = p.NumElements();
    t->w = weights.Take<uint16_t>(t->n);
    if (g.for_training && p.trainable) {
      t->master = masters.Take<float>(t->n);
      t->grad = grads.Take<float>(t->n);
    }
  });
  const int64_t n = g.n, c = g.c;
  // The work set: what blocks below the lowest differentiated one use, and
  // what recomputation rebuilds.
  const bool differentiated = g.lowest < g.layers;
  const bool work_attention = g.lowest > 0 || g.recompute != Recompute::kNone;
  const bool work_mlp = g.lowest > 0 || g.recompute == Recompute::kFull;
  BlockActs& w = l->work;
  w = BlockActs{};
  if (work_attention) {
    w.xn1 = scratch.Take<uint16_t>(n * c);
    w.inv1 = scratch.Take<float>(n);
    w.q = scratch.Take<uint16_t>(n * g.q);
    w.k = scratch.Take<uint16_t>(n * g.kv);
    w.v = scratch.Take<uint16_t>(n * g.kv);
    w.attn = scratch.Take<uint16_t>(n * g.q);
    w.lse = scratch.Take<float>(g.lse);
  }
  if (work_mlp) {
    w.xn2 = scratch.Take<uint16_t>(n * c);
    w.inv2 = scratch.Take<float>(n);
    w.gate = scratch.Take<uint16_t>(n * g.f);
    w.up = scratch.Take<uint16_t>(n * g.f);
  }
  if (g.recompute == Recompute::kFull) w.x_mid = scratch.Take<uint16_t>(n * c);
  l->saved.assign(params.blocks.size(), BlockActs{});
  for (int64_t i = g.lowest; i < g.layers; ++i) {
    BlockActs& a = l->saved[i];
    a = w;
    a.x_in = acts.Take<uint16_t>(n * c);
    if (g.recompute != Recompute::kFull) {
      a.x_mid = acts.Take<uint16_t>(n * c);
      a.xn2 = acts.Take<uint16_t>(n * c);
      a.inv2 = acts.Take<float>(n);
      a.gate = acts.Take<uint16_t>(n * g.f);
      a.up = acts.Take<uint16_t>(n * g.f);
    }
    if (g.recompute == Recompute::kNone) {
      a.xn1 = acts.Take<uint16_t>(n * c);
      a.inv1 = acts.Take<float>(n);
      a.q = acts.Take<uint16_t>(n * g.q);
      a.k = acts.Take<uint16_t>(n * g.kv);
      a.v = acts.Take<uint16_t>(n * g.kv);
      a.attn = acts.Take<uint16_t>(n * g.q);
      a.lse = acts.Take<float>(g.lse);
    }
  }
  l->x = scratch.Take<uint16_t>(n * c);
  if (g.for_training) {
    l->x_final = differentiated ? acts.Take<uint16_t>(n * c) : l->x;
    l->xn_final = acts.Take<uint16_t>(n * c);
    l->inv_final = acts.Take<float>(n);
  } else {
    l->x_final = l->x;
    l->xn_final = scratch.Take<uint16_t>(n * c);
    l->inv_final = scratch.Take<float>(n);
  }
  l->act = scratch.Take<uint16_t>(n * g.f);
  if (g.head_dx) l->dxn = scratch.Take<uint16_t>(n * c);
  if (differentiated) {
    l->dres = scratch.Take<uint16_t>(n * c);
    l->dtmp = scratch.Take<uint16_t>(n * c);
    l->dq = scratch.Take<uint16_t>(n * g.q);
    l->dk = scratch.Take<uint16_t>(n * g.kv);
    l->dv = scratch.Take<uint16_t>(n * g.kv);
    l->dattn = scratch.Take<uint16_t>(n * g.q);
    l->dact = scratch.Take<uint16_t>(n * g.f);
    l->attn_scratch =
        scratch.Take<float>(cuda::AttentionBackwardScratchSize(g.batch, g.seq_len, g.heads));
  }
  if (g.any_norm_grad)
    l->norm_scratch = scratch.Take<float>(cuda::RmsNormBackwardScratchSize(n, c));
  if (g.any_bias_grad) {
    const int64_t widest = std::max({g.q, g.kv, g.f, c});
    l->bias_scratch = scratch.Take<float>(cuda::BiasBackwardScratchSize(n, widest));
  }
  l->logits = scratch.Take<uint16_t>(g.chunk_rows * g.v);
  l->loss = scratch.Take<float>(n);
  l->inputs = scratch.Take<int32_t>(n);
  l->targets = scratch.Take<int32_t>(n);
  l->mask = scratch.Take<uint8_t>(n);
  l->rope_cos = scratch.Take<float>(g.seq_len * (g.d / 2));
  l->rope_sin = scratch.Take<float>(g.seq_len * (g.d / 2));
  l->bytes[kWeights] = weights.size();
  l->bytes[kMasters] = masters.size();
  l->bytes[kGradients] = grads.size();
  l->bytes[kActivations] = acts.size();
  l->bytes[kScratch] = scratch.size();
}

// The checks Create makes before touching a device.
absl::Status CheckSupported(const LlamaParams& params, const CudaPassOptions& options) {
  const LlamaConfig& config = params.config;
  if (params.lora_rank > 0) {
    return absl::InvalidArgumentError(
        "LoRA adapters are not supported by the CUDA backend (use the CPU backend)");
  }
  if (config.moe_experts != 0) {
    return absl::InvalidArgumentError(
        "MoE experts are not supported by the CUDA backend (use the CPU backend)");
  }
  for (const BlockParams& b : params.blocks) {
    for (const LoraAdapter& adapter : b.lora) {
      if (adapter.present()) {
        return absl::InvalidArgumentError(
            absl::StrCat("LoRA adapter '", adapter.a.name,
                         "' is not supported by the CUDA backend (use the CPU backend)"));
      }
    }
    if (b.moe() || !b.expert_gate.value.empty() || !b.expert_up.value.empty() ||
        !b.expert_down.value.empty()) {
      return absl::InvalidArgumentError(
          "MoE experts are not supported by the CUDA backend (use the CPU backend)");
    }
  }
  Layout probe;
  absl::Status status;
  ForEachTensor(params, &probe, [&](const Parameter& p, DeviceTensor*) {
    if (status.ok() && (p.split_dim != -1 || !p.full_shape.empty())) {
      status = absl::InvalidArgumentError(
          absl::StrCat("tensor parallelism is not supported by the CUDA backend: '", p.name,
                       "' is a slice of its tensor (use the CPU backend)"));
    }
  });
  LP_RETURN_IF_ERROR(status);
  if (config.head_dim <= 0 || config.head_dim % 2 != 0 ||
      config.head_dim > cuda::kMaxAttentionHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", config.head_dim,
                                                   " is not supported by the CUDA backend (it must "
                                                   "be even and at most ",
                                                   cuda::kMaxAttentionHeadDim, ")"));
  }
  if (config.vocab_size <= 0 || config.hidden_size <= 0 || config.intermediate_size <= 0 ||
      config.num_attention_heads <= 0 || config.num_key_value_heads <= 0 ||
      config.num_attention_heads % config.num_key_value_heads != 0 || params.blocks.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad model sizes for the CUDA backend: vocab ", config.vocab_size, ", hidden ",
                     config.hidden_size, ", ffn ", config.intermediate_size, ", heads ",
                     config.num_attention_heads, ", kv heads ", config.num_key_value_heads,
                     ", blocks ", params.blocks.size()));
  }
  if (options.batch <= 0 || options.seq_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad pass sizes: batch ", options.batch, ", seq_len ", options.seq_len));
  }
  if (options.logits_chunk_rows < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("logits_chunk_rows ", options.logits_chunk_rows, " is negative"));
  }
  const int64_t c = config.hidden_size, v = config.vocab_size, f = config.intermediate_size;
  const int64_t q = config.num_attention_heads * config.head_dim;
  const int64_t kv = config.num_key_value_heads * config.head_dim;
  auto expect = [&](const Parameter& p, int64_t size, bool optional) -> absl::Status {
    if (optional && p.value.empty()) return absl::OkStatus();
    if (p.NumElements() != size) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", p.name, "' has ", p.NumElements(),
                                                     " values; the config needs ", size));
    }
    return absl::OkStatus();
  };
  LP_RETURN_IF_ERROR(expect(params.embed, v * c, false));
  for (const BlockParams& b : params.blocks) {
    LP_RETURN_IF_ERROR(expect(b.input_norm, c, false));
    LP_RETURN_IF_ERROR(expect(b.q_proj, q * c, false));
    LP_RETURN_IF_ERROR(expect(b.k_proj, kv * c, false));
    LP_RETURN_IF_ERROR(expect(b.v_proj, kv * c, false));
    LP_RETURN_IF_ERROR(expect(b.o_proj, c * q, false));
    LP_RETURN_IF_ERROR(expect(b.q_bias, q, true));
    LP_RETURN_IF_ERROR(expect(b.k_bias, kv, true));
    LP_RETURN_IF_ERROR(expect(b.v_bias, kv, true));
    LP_RETURN_IF_ERROR(expect(b.o_bias, c, true));
    LP_RETURN_IF_ERROR(expect(b.post_norm, c, false));
    LP_RETURN_IF_ERROR(expect(b.gate_proj, f * c, false));
    LP_RETURN_IF_ERROR(expect(b.up_proj, f * c, false));
    LP_RETURN_IF_ERROR(expect(b.down_proj, c * f, false));
    LP_RETURN_IF_ERROR(expect(b.gate_bias, f, true));
    LP_RETURN_IF_ERROR(expect(b.up_bias, f, true));
    LP_RETURN_IF_ERROR(expect(b.down_bias, c, true));
  }
  LP_RETURN_IF_ERROR(expect(params.final_norm, c, false));
  if (!config.tie_word_embeddings) LP_RETURN_IF_ERROR(expect(params.lm_head, v * c, false));
  return absl::OkStatus();
}

// FLOPs per token: TrainingPass::ComputeFlops (without LoRA and MoE, which
// this backend refuses) plus, in the backward, the forward work recomputed
// for every differentiated block: under kAttention the q/k/v projections and
// the attention forward; under kFull also o_proj and the gate/up projections
// (down_proj's output is never needed by the backward, so it is not redone).
FlopCount ComputeFlops(const LlamaParams& params, const Geometry& g) {
  const double c = static_cast<double>(g.c), f = static_cast<double>(g.f);
  const double q = static_cast<double>(g.q), kv = static_cast<double>(g.kv);
  const double v = static_cast<double>(g.v), t = static_cast<double>(g.seq_len);
  const double qkv = c * (q + 2 * kv);
  const double layers = static_cast<double>(g.layers);
  FlopCount flops;
  flops.forward = layers * (2 * qkv + 2 * q * c + 6 * c * f + 4 * t * q) + 2 * c * v;
  double backward = 0;
  if (g.head_dx) backward += 2 * c * v;
  if (g.head_grad) backward += 2 * c * v;
  for (int64_t i = g.lowest; i < g.layers; ++i) {
    const BlockParams& b = params.blocks[i];
    backward += 2 * f * c + 4 * c * f + 2 * q * c + 10 * t * q;
    if (b.down_proj.trainable) backward += 2 * f * c;
    if (b.gate_proj.trainable) backward += 4 * c * f;
    if (b.o_proj.trainable) backward += 2 * q * c;
    const bool need_dxn1 = i > g.lowest || g.embed_grad || b.input_norm.trainable;
    if (need_dxn1) backward += 2 * qkv;
    if (b.q_proj.trainable) backward += 2 * qkv;
    if (g.recompute == Recompute::kAttention) backward += 2 * qkv + 4 * t * q;
    if (g.recompute == Recompute::kFull) backward += 2 * qkv + 2 * q * c + 4 * c * f + 4 * t * q;
  }
  flops.backward = backward;
  return flops;
}

CudaMemory MemoryOf(const Layout& l) {
  CudaMemory m;
  m.weight_bytes = l.bytes[kWeights];
  m.master_bytes = l.bytes[kMasters];
  m.gradient_bytes = l.bytes[kGradients];
  m.activation_bytes = l.bytes[kActivations];
  m.scratch_bytes = l.bytes[kScratch] + static_cast<int64_t>(cuda::Gemm::kDefaultWorkspaceBytes);
  return m;
}

std::string DescribeMemory(const CudaMemory& m) {
  return absl::StrFormat(
      "%d bytes: weights %d, masters %d, gradients %d, activations %d, scratch %d", m.total(),
      m.weight_bytes, m.master_bytes, m.gradient_bytes, m.activation_bytes, m.scratch_bytes);
}

}  // namespace

struct CudaTrainingPass::Impl {
  enum class Stage { kAttention, kUpToMlp, kAll };  // How far BlockForward goes.
  enum class Head { kTrain, kEvaluate, kLogits };

  LlamaParams* params = nullptr;
  Geometry g;
  cudaStream_t stream = nullptr;
  void* arena[kKinds] = {};
  Layout l;
  std::unique_ptr<cuda::Gemm> gemm;
  // Pinned host staging for the inputs, targets, mask and per-row losses.
  int32_t* h_inputs = nullptr;
  int32_t* h_targets = nullptr;
  uint8_t* h_mask = nullptr;
  float* h_loss = nullptr;
  bool all_targets = true;
  int64_t targets_counted = 0;
  float eps = 0;
  // While true, GEMMs are planned (not run) and nothing else is enqueued:
  // Create walks every pass once this way.
  bool planning = false;
  // Gradient groups in the listener's order: the head group, block
  // layers-1 .. 0, the embedding.
  std::vector<CudaTrainable*> head_group, embed_group;
  std::vector<std::vector<CudaTrainable*>> block_groups;
  const DeviceTensor* head = nullptr;

  ~Impl() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    gemm.reset();
    for (void* p : arena) {
      if (p != nullptr) cudaFree(p);
    }
    for (void* p : {static_cast<void*>(h_inputs), static_cast<void*>(h_targets),
                    static_cast<void*>(h_mask), static_cast<void*>(h_loss)}) {
      if (p != nullptr) cudaFreeHost(p);
    }
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  // Runs (or, while planning, plans) one GEMM.
  absl::Status Mm(const cuda::GemmArgs& args) {
    return FromCuda(planning ? gemm->Plan(args) : gemm->Run(args, stream));
  }

  // y[n, out] (=|+=) x[n, in] W^T + bias.
  absl::Status Linear(const uint16_t* x, const DeviceTensor& w, const DeviceTensor& bias,
                      uint16_t* y, int64_t in, int64_t out, bool accumulate) {
    const int64_t n = g.n;
    if (bias.w != nullptr && !planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::BiasForward(bias.w, y, n, out, accumulate, stream));
    }
    cuda::GemmArgs a;
    a.trans_b = true;
    a.m = n;
    a.n = out;
    a.k = in;
    a.a = x;
    a.lda = in;
    a.b = w.w;
    a.ldb = in;
    a.c = y;
    a.ldc = out;
    a.beta = accumulate || bias.w != nullptr ? 1.0f : 0.0f;
    return Mm(a);
  }

  // dx[n, in] (=|+=) dy W (when dx != nullptr); W.grad += dy^T x and
  // bias.grad += column sums of dy (where they train).
  absl::Status LinearBackward(const uint16_t* dy, const uint16_t* x, const DeviceTensor& w,
                              const DeviceTensor& bias, uint16_t* dx, bool accumulate, int64_t in,
                              int64_t out) {
    const int64_t n = g.n;
    if (dx != nullptr) {
      cuda::GemmArgs a;
      a.m = n;
      a.n = in;
      a.k = out;
      a.a = dy;
      a.lda = out;
      a.b = w.w;
      a.ldb = in;
      a.c = dx;
      a.ldc = in;
      a.beta = accumulate ? 1.0f : 0.0f;
      LP_RETURN_IF_ERROR(Mm(a));
    }
    if (w.grad != nullptr) {
      cuda::GemmArgs a;
      a.trans_a = true;
      a.m = out;
      a.n = in;
      a.k = n;
      a.a = dy;
      a.lda = out;
      a.b = x;
      a.ldb = in;
      a.c = w.grad;
      a.ldc = in;
      a.c_type = cuda::GemmOutput::kF32;
      a.beta = 1.0f;
      LP_RETURN_IF_ERROR(Mm(a));
    }
    if (bias.grad != nullptr && !planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::BiasBackward(dy, bias.grad, n, out, l.bias_scratch, stream));
    }
    return absl::OkStatus();
  }

  // The block forward from x_in, up to `stage`. x_mid may equal x_in and
  // x_out x_mid (in place); x_out is not written below Stage::kAll.
  absl::Status BlockForward(int64_t layer, const BlockActs& a, const uint16_t* x_in,
                            uint16_t* x_mid, uint16_t* x_out, Stage stage) {
    const BlockWeights& w = l.blocks[layer];
    const int64_t n = g.n, c = g.c;
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(
          cuda::RmsNormForward(x_in, w.input_norm.w, a.xn1, a.inv1, n, c, eps, stream));
    }
    LP_RETURN_IF_ERROR(Linear(a.xn1, w.q, w.q_bias, a.q, c, g.q, false));
    LP_RETURN_IF_ERROR(Linear(a.xn1, w.k, w.k_bias, a.k, c, g.kv, false));
    LP_RETURN_IF_ERROR(Linear(a.xn1, w.v, w.v_bias, a.v, c, g.kv, false));
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(
          cuda::RopeForward(a.q, l.rope_cos, l.rope_sin, g.batch, g.seq_len, g.heads, g.d, stream));
      LP_CUDA_RETURN_IF_ERROR(cuda::RopeForward(a.k, l.rope_cos, l.rope_sin, g.batch, g.seq_len,
                                                g.kv_heads, g.d, stream));
      LP_CUDA_RETURN_IF_ERROR(cuda::AttentionForward(a.q, a.k, a.v, a.attn, a.lse, g.batch,
                                                     g.seq_len, g.heads, g.kv_heads, g.d,
                                                     params->config.sliding_window, stream));
    }
    if (stage == Stage::kAttention) return absl::OkStatus();
    if (x_mid != x_in && !planning) {
      LP_CUDA_RETURN_IF_ERROR(
          cudaMemcpyAsync(x_mid, x_in, n * c * sizeof(uint16_t), cudaMemcpyDeviceToDevice, stream));
    }
    LP_RETURN_IF_ERROR(Linear(a.attn, w.o, w.o_bias, x_mid, g.q, c, /*accumulate=*/true));
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(
          cuda::RmsNormForward(x_mid, w.post_norm.w, a.xn2, a.inv2, n, c, eps, stream));
    }
    LP_RETURN_IF_ERROR(Linear(a.xn2, w.gate, w.gate_bias, a.gate, c, g.f, false));
    LP_RETURN_IF_ERROR(Linear(a.xn2, w.up, w.up_bias, a.up, c, g.f, false));
    if (stage == Stage::kUpToMlp) return absl::OkStatus();
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::SiluMulForward(a.gate, a.up, l.act, n * g.f, stream));
      if (x_out != x_mid) {
        LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(x_out, x_mid, n * c * sizeof(uint16_t),
                                                cudaMemcpyDeviceToDevice, stream));
      }
    }
    return Linear(l.act, w.down, w.down_bias, x_out, g.f, c, /*accumulate=*/true);
  }

  // Embedding, every block, the final norm.
  absl::Status Forward() {
    const int64_t n = g.n, c = g.c;
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::EmbeddingForward(l.embed.w, l.inputs, l.x, n, c, stream));
    }
    for (int64_t i = 0; i < g.layers; ++i) {
      if (i < g.lowest) {
        LP_RETURN_IF_ERROR(BlockForward(i, l.work, l.x, l.x, l.x, Stage::kAll));
        continue;
      }
      const BlockActs& a = l.saved[i];
      if (i == g.lowest && !planning) {
        LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(a.x_in, l.x, n * c * sizeof(uint16_t),
                                                cudaMemcpyDeviceToDevice, stream));
      }
      uint16_t* out = i + 1 < g.layers ? l.saved[i + 1].x_in : l.x_final;
      LP_RETURN_IF_ERROR(BlockForward(i, a, a.x_in, a.x_mid, out, Stage::kAll));
    }
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::RmsNormForward(l.x_final, l.final_norm.w, l.xn_final,
                                                   l.inv_final, n, c, eps, stream));
    }
    return absl::OkStatus();
  }

  // The lm_head and the loss over chunks of rows. kTrain: dlogits scaled by
  // `scale`, then d(xn_final) and the head's weight gradient; kEvaluate:
  // losses only; kLogits: the bf16 logits copied into *logits_out.
  absl::Status LmHead(Head mode, float scale, std::vector<uint16_t>* logits_out) {
    const int64_t n = g.n, c = g.c, v = g.v;
    for (int64_t r0 = 0; r0 < n; r0 += g.chunk_rows) {
      const int64_t rows = std::min(g.chunk_rows, n - r0);
      const uint16_t* xn = l.xn_final + r0 * c;
      cuda::GemmArgs fwd;
      fwd.trans_b = true;
      fwd.m = rows;
      fwd.n = v;
      fwd.k = c;
      fwd.a = xn;
      fwd.lda = c;
      fwd.b = head->w;
      fwd.ldb = c;
      fwd.c = l.logits;
      fwd.ldc = v;
      LP_RETURN_IF_ERROR(Mm(fwd));
      if (mode == Head::kLogits) {
        if (!planning) {
          LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(logits_out->data() + r0 * v, l.logits,
                                                  rows * v * sizeof(uint16_t),
                                                  cudaMemcpyDeviceToHost, stream));
        }
        continue;
      }
      if (!planning) {
        LP_CUDA_RETURN_IF_ERROR(cuda::CrossEntropyForwardBackward(
            l.logits, l.targets + r0, all_targets ? nullptr : l.mask + r0,
            mode == Head::kTrain ? scale : 0.0f, l.loss + r0, rows, v, stream));
      }
      if (mode != Head::kTrain) continue;
      if (g.head_dx) {
        cuda::GemmArgs dx;
        dx.m = rows;
        dx.n = c;
        dx.k = v;
        dx.a = l.logits;
        dx.lda = v;
        dx.b = head->w;
        dx.ldb = c;
        dx.c = l.dxn + r0 * c;
        dx.ldc = c;
        LP_RETURN_IF_ERROR(Mm(dx));
      }
      if (g.head_grad) {
        cuda::GemmArgs dw;
        dw.trans_a = true;
        dw.m = v;
        dw.n = c;
        dw.k = rows;
        dw.a = l.logits;
        dw.lda = v;
        dw.b = xn;
        dw.ldb = c;
        dw.c = head->grad;
        dw.ldc = c;
        dw.c_type = cuda::GemmOutput::kF32;
        dw.beta = 1.0f;
        LP_RETURN_IF_ERROR(Mm(dw));
      }
    }
    return absl::OkStatus();
  }

  // Backward of block `layer` from dres = d(its output); dres becomes
  // d(its input) when need_input_grad.
  absl::Status BlockBackward(int64_t layer, bool need_input_grad) {
    const BlockWeights& w = l.blocks[layer];
    const BlockActs& a = l.saved[layer];
    const int64_t n = g.n, c = g.c, f = g.f;
    // Rebuild what this mode did not keep (same kernels, same inputs).
    if (g.recompute == Recompute::kAttention) {
      LP_RETURN_IF_ERROR(BlockForward(layer, a, a.x_in, a.x_mid, nullptr, Stage::kAttention));
    } else if (g.recompute == Recompute::kFull) {
      LP_RETURN_IF_ERROR(BlockForward(layer, a, a.x_in, a.x_mid, nullptr, Stage::kUpToMlp));
    }
    // MLP branch: x_out = x_mid + down(silu(gate) * up).
    if (w.down.grad != nullptr && !planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::SiluMulForward(a.gate, a.up, l.act, n * f, stream));
    }
    LP_RETURN_IF_ERROR(LinearBackward(l.dres, l.act, w.down, w.down_bias, l.dact, false, f, c));
    if (!planning) {
      // d(gate) and d(up) overwrite gate and up (each read before written).
      LP_CUDA_RETURN_IF_ERROR(
          cuda::SiluMulBackward(a.gate, a.up, l.dact, a.gate, a.up, n * f, stream));
    }
    LP_RETURN_IF_ERROR(LinearBackward(a.gate, a.xn2, w.gate, w.gate_bias, l.dxn, false, c, f));
    LP_RETURN_IF_ERROR(LinearBackward(a.up, a.xn2, w.up, w.up_bias, l.dxn, true, c, f));
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::RmsNormBackward(l.dxn, a.x_mid, w.post_norm.w, a.inv2, l.dtmp,
                                                    w.post_norm.grad, n, c, l.norm_scratch,
                                                    stream));
      LP_CUDA_RETURN_IF_ERROR(cuda::Add(l.dres, l.dtmp, l.dres, n * c, stream));  // d(x_mid).
    }
    // Attention branch: x_mid = x_in + o(attention(rope(q), rope(k), v)).
    LP_RETURN_IF_ERROR(LinearBackward(l.dres, a.attn, w.o, w.o_bias, l.dattn, false, g.q, c));
    if (!planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::AttentionBackward(
          a.q, a.k, a.v, a.attn, a.lse, l.dattn, l.dq, l.dk, l.dv, g.batch, g.seq_len, g.heads,
          g.kv_heads, g.d, params->config.sliding_window, l.attn_scratch, stream));
      LP_CUDA_RETURN_IF_ERROR(cuda::RopeBackward(l.dq, l.rope_cos, l.rope_sin, g.batch, g.seq_len,
                                                 g.heads, g.d, stream));
      LP_CUDA_RETURN_IF_ERROR(cuda::RopeBackward(l.dk, l.rope_cos, l.rope_sin, g.batch, g.seq_len,
                                                 g.kv_heads, g.d, stream));
    }
    const bool need_dxn1 = need_input_grad || w.input_norm.grad != nullptr;
    uint16_t* dxn = need_dxn1 ? l.dxn : nullptr;
    LP_RETURN_IF_ERROR(LinearBackward(l.dq, a.xn1, w.q, w.q_bias, dxn, false, c, g.q));
    LP_RETURN_IF_ERROR(LinearBackward(l.dk, a.xn1, w.k, w.k_bias, dxn, true, c, g.kv));
    LP_RETURN_IF_ERROR(LinearBackward(l.dv, a.xn1, w.v, w.v_bias, dxn, true, c, g.kv));
    if (!need_dxn1 || planning) return absl::OkStatus();
    LP_CUDA_RETURN_IF_ERROR(cuda::RmsNormBackward(l.dxn, a.x_in, w.input_norm.w, a.inv1,
                                                  need_input_grad ? l.dtmp : nullptr,
                                                  w.input_norm.grad, n, c, l.norm_scratch, stream));
    if (need_input_grad) {
      LP_CUDA_RETURN_IF_ERROR(cuda::Add(l.dres, l.dtmp, l.dres, n * c, stream));  // d(x_in).
    }
    return absl::OkStatus();
  }

  absl::Status Notify(GradientReadyListener* listener, const std::vector<CudaTrainable*>& group) {
    if (listener == nullptr || planning || group.empty()) return absl::OkStatus();
    return listener->GradientsReady(std::span<CudaTrainable* const>(group), stream);
  }

  // Everything after the lm_head: the final norm, the blocks from the top
  // down to the lowest differentiated one, the embedding.
  absl::Status Backward(GradientReadyListener* listener) {
    const int64_t n = g.n, c = g.c;
    if (g.head_dx && !planning) {
      LP_CUDA_RETURN_IF_ERROR(cuda::RmsNormBackward(
          l.dxn, l.x_final, l.final_norm.w, l.inv_final, g.lowest < g.layers ? l.dres : nullptr,
          l.final_norm.grad, n, c, l.norm_scratch, stream));
    }
    LP_RETURN_IF_ERROR(Notify(listener, head_group));
    if (!g.head_dx) return absl::OkStatus();
    for (int64_t i = g.layers - 1; i >= g.lowest; --i) {
      LP_RETURN_IF_ERROR(BlockBackward(i, /*need_input_grad=*/i > g.lowest || g.embed_grad));
      LP_RETURN_IF_ERROR(Notify(listener, block_groups[i]));
    }
    if (g.embed_grad) {
      if (!planning) {
        LP_CUDA_RETURN_IF_ERROR(
            cuda::EmbeddingBackward(l.dres, l.inputs, l.embed.grad, n, c, stream));
      }
      LP_RETURN_IF_ERROR(Notify(listener, embed_group));
    }
    return absl::OkStatus();
  }

  // Validates the tokens and mask on the host and uploads inputs, targets
  // and mask (enqueued).
  absl::Status Prepare(std::span<const int32_t> tokens, std::span<const uint8_t> mask) {
    const int64_t width = g.seq_len + 1;
    if (static_cast<int64_t>(tokens.size()) != g.batch * width) {
      return absl::InvalidArgumentError(
          absl::StrCat("expected ", g.batch, " x ", width, " tokens, got ", tokens.size()));
    }
    if (!mask.empty() && mask.size() != tokens.size()) {
      return absl::InvalidArgumentError("the loss mask and the tokens differ in size");
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= g.v) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", tokens[i], " at position ", i, " (row ", static_cast<int64_t>(i) / width,
            ", column ", static_cast<int64_t>(i) % width, ") is outside the vocabulary [0, ", g.v,
            ")"));
      }
    }
    // The staging buffers may still feed a copy of a failed earlier call.
    LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    all_targets = mask.empty();
    targets_counted = 0;
    for (int64_t b = 0; b < g.batch; ++b) {
      for (int64_t t = 0; t < g.seq_len; ++t) {
        const int64_t r = b * g.seq_len + t;
        h_inputs[r] = tokens[b * width + t];
        h_targets[r] = tokens[b * width + t + 1];
        h_mask[r] = mask.empty() ? 1 : (mask[b * width + t + 1] != 0 ? 1 : 0);
        targets_counted += h_mask[r];
      }
    }
    const size_t n = static_cast<size_t>(g.n);
    LP_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(l.inputs, h_inputs, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    LP_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(l.targets, h_targets, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    LP_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(l.mask, h_mask, n * sizeof(uint8_t), cudaMemcpyHostToDevice, stream));
    return absl::OkStatus();
  }

  // Copies the per-row losses back, waits for the stream, sums in double.
  absl::StatusOr<LossSum> FinishLoss() {
    LP_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(h_loss, l.loss, g.n * sizeof(float), cudaMemcpyDeviceToHost, stream));
    LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    LossSum sum;
    for (int64_t r = 0; r < g.n; ++r) sum.loss += static_cast<double>(h_loss[r]);
    sum.targets = targets_counted;
    return sum;
  }

  // Walks every pass once with `planning` set, so each GEMM shape is
  // planned before the first step.
  absl::Status PlanAll() {
    planning = true;
    absl::Status status = Forward();
    if (status.ok() && g.for_training) status = LmHead(Head::kTrain, 1.0f, nullptr);
    if (status.ok() && g.for_training) status = Backward(nullptr);
    if (status.ok()) status = LmHead(Head::kEvaluate, 0.0f, nullptr);
    planning = false;
    return status;
  }
};

CudaTrainingPass::CudaTrainingPass(LlamaParams* params, const CudaPassOptions& options)
    : params_(params), options_(options) {}

CudaTrainingPass::~CudaTrainingPass() {
  if (impl_ != nullptr) cudaSetDevice(options_.device);
  impl_.reset();
}

CudaMemory CudaTrainingPass::PlanMemory(const LlamaParams& params, const CudaPassOptions& options) {
  const Geometry g = MakeGeometry(params, options);
  Layout l;
  char* const bases[kKinds] = {};
  LayOut(params, g, bases, &l);
  return MemoryOf(l);
}

absl::StatusOr<std::unique_ptr<CudaTrainingPass>> CudaTrainingPass::Create(
    LlamaParams* params, const CudaPassOptions& options) {
  if (params == nullptr) return absl::InvalidArgumentError("CudaTrainingPass: null params");
  LP_RETURN_IF_ERROR(CheckSupported(*params, options));
  const int devices = cuda::DeviceCount();
  if (options.device < 0 || options.device >= devices) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device ", options.device, " is not available: this machine has ",
                     devices, " usable CUDA device", devices == 1 ? "" : "s"));
  }
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));

  std::unique_ptr<CudaTrainingPass> pass(new CudaTrainingPass(params, options));
  pass->impl_ = std::make_unique<Impl>();
  Impl& impl = *pass->impl_;
  impl.params = params;
  impl.g = MakeGeometry(*params, options);
  impl.eps = static_cast<float>(params->config.rms_norm_eps);
  const Geometry& g = impl.g;
  pass->lowest_ = g.lowest;
  pass->flops_ = ComputeFlops(*params, g);
  pass->memory_ = PlanMemory(*params, options);

  size_t free_bytes = 0, total_bytes = 0;
  LP_CUDA_RETURN_IF_ERROR(cudaMemGetInfo(&free_bytes, &total_bytes));
  if (pass->memory_.total() > static_cast<int64_t>(free_bytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the CUDA training pass needs ", DescribeMemory(pass->memory_), "; device ",
                     options.device, " has ", free_bytes, " bytes free of ", total_bytes));
  }
  {
    Layout probe;
    char* const zero[kKinds] = {};
    LayOut(*params, g, zero, &probe);
    char* bases[kKinds] = {};
    for (int k = 0; k < kKinds; ++k) {
      if (probe.bytes[k] == 0) continue;
      LP_CUDA_RETURN_IF_ERROR(cudaMalloc(&impl.arena[k], static_cast<size_t>(probe.bytes[k])));
      bases[k] = static_cast<char*>(impl.arena[k]);
    }
    LayOut(*params, g, bases, &impl.l);
  }
  Layout& l = impl.l;
  LP_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&impl.stream, cudaStreamNonBlocking));
  pass->stream_ = impl.stream;
  const cudaStream_t stream = impl.stream;
  impl.head = params->config.tie_word_embeddings ? &l.embed : &l.lm_head;

  // Pinned staging.
  const size_t n = static_cast<size_t>(g.n);
  LP_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&impl.h_inputs), n * 4));
  LP_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&impl.h_targets), n * 4));
  LP_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&impl.h_mask), n));
  LP_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&impl.h_loss), n * 4));

  // Weights: trainable ones through their fp32 master (cast on the device),
  // frozen ones rounded on the host (kernels/dtype.h rounds exactly as the
  // device cast does).
  std::vector<uint16_t> staging;
  std::vector<DeviceTensor*> all;
  ForEachTensor(*params, &l, [&](const Parameter&, DeviceTensor* t) { all.push_back(t); });
  for (DeviceTensor* t : all) {
    const Parameter& p = *t->param;
    const size_t count = static_cast<size_t>(t->n);
    if (t->master != nullptr) {
      LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t->master, p.value.data(), count * sizeof(float),
                                              cudaMemcpyHostToDevice, stream));
      LP_CUDA_RETURN_IF_ERROR(cuda::CastF32ToBF16(t->master, t->w, t->n, stream));
      LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    } else {
      staging.resize(count);
      for (size_t i = 0; i < count; ++i) staging[i] = FloatToBF16(p.value[i]);
      // Stream-ordered, and finished before `staging` is refilled.
      LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t->w, staging.data(), count * sizeof(uint16_t),
                                              cudaMemcpyHostToDevice, stream));
      LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    }
  }
  if (l.bytes[kGradients] > 0) {
    LP_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(impl.arena[kGradients], 0, l.bytes[kGradients], stream));
  }
  {
    std::vector<float> cos_table, sin_table;
    ref::RopeTables(RopeInverseFrequencies<float>(params->config), g.seq_len, &cos_table,
                    &sin_table);
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(l.rope_cos, cos_table.data(),
                                            cos_table.size() * sizeof(float),
                                            cudaMemcpyHostToDevice, stream));
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(l.rope_sin, sin_table.data(),
                                            sin_table.size() * sizeof(float),
                                            cudaMemcpyHostToDevice, stream));
    LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));  // Before the tables go.
  }

  // Trainable tensors in LlamaParams::Trainable() order, and their groups.
  std::unordered_map<const DeviceTensor*, int64_t> group_of;  // -1 head, layers embed.
  group_of[&l.embed] = g.layers;
  group_of[&l.final_norm] = -1;
  group_of[&l.lm_head] = -1;
  for (int64_t i = 0; i < g.layers; ++i) {
    BlockWeights& w = l.blocks[i];
    for (const DeviceTensor* t :
         {&w.input_norm, &w.q, &w.k, &w.v, &w.o, &w.q_bias, &w.k_bias, &w.v_bias, &w.o_bias,
          &w.post_norm, &w.gate, &w.up, &w.down, &w.gate_bias, &w.up_bias, &w.down_bias}) {
      group_of[t] = i;
    }
  }
  std::vector<int64_t> groups;
  for (DeviceTensor* t : all) {
    if (t->master == nullptr) continue;
    pass->trainable_.push_back(CudaTrainable{t->param, t->master, t->grad, t->w, t->n});
    groups.push_back(group_of.at(t));
  }
  impl.block_groups.assign(g.layers, {});
  for (size_t i = 0; i < groups.size(); ++i) {
    CudaTrainable* t = &pass->trainable_[i];
    if (groups[i] < 0) {
      impl.head_group.push_back(t);
    } else if (groups[i] == g.layers) {
      impl.embed_group.push_back(t);
    } else {
      impl.block_groups[groups[i]].push_back(t);
    }
  }

  LP_RETURN_IF_ERROR(FromCuda(cuda::Gemm::Create(cuda::Gemm::kDefaultWorkspaceBytes, &impl.gemm)));
  LP_RETURN_IF_ERROR(impl.PlanAll());
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  return pass;
}

absl::StatusOr<LossSum> CudaTrainingPass::ForwardBackward(std::span<const int32_t> tokens,
                                                          std::span<const uint8_t> mask,
                                                          float grad_scale,
                                                          GradientReadyListener* listener) {
  if (!options_.for_training) {
    return absl::FailedPreconditionError("this CUDA pass was built for evaluation only");
  }
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  LP_RETURN_IF_ERROR(impl_->Prepare(tokens, mask));
  LP_RETURN_IF_ERROR(impl_->Forward());
  LP_RETURN_IF_ERROR(impl_->LmHead(Impl::Head::kTrain, grad_scale, nullptr));
  LP_RETURN_IF_ERROR(impl_->Backward(listener));
  return impl_->FinishLoss();
}

absl::StatusOr<LossSum> CudaTrainingPass::Evaluate(std::span<const int32_t> tokens,
                                                   std::span<const uint8_t> mask) {
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  LP_RETURN_IF_ERROR(impl_->Prepare(tokens, mask));
  LP_RETURN_IF_ERROR(impl_->Forward());
  LP_RETURN_IF_ERROR(impl_->LmHead(Impl::Head::kEvaluate, 0.0f, nullptr));
  return impl_->FinishLoss();
}

absl::StatusOr<std::vector<float>> CudaTrainingPass::Logits(std::span<const int32_t> tokens) {
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  LP_RETURN_IF_ERROR(impl_->Prepare(tokens, {}));
  LP_RETURN_IF_ERROR(impl_->Forward());
  const Geometry& g = impl_->g;
  std::vector<uint16_t> bf16(static_cast<size_t>(g.n * g.v));
  LP_RETURN_IF_ERROR(impl_->LmHead(Impl::Head::kLogits, 0.0f, &bf16));
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  std::vector<float> logits(bf16.size());
  for (size_t i = 0; i < bf16.size(); ++i) logits[i] = BF16ToFloat(bf16[i]);
  return logits;
}

absl::Status CudaTrainingPass::ZeroGradients() {
  const int64_t bytes = impl_->l.bytes[kGradients];
  if (bytes == 0) return absl::OkStatus();
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  LP_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(impl_->arena[kGradients], 0, bytes, stream_));
  return absl::OkStatus();
}

absl::Status CudaTrainingPass::DownloadGradients() {
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  for (CudaTrainable& t : trainable_) {
    t.param->grad.resize(static_cast<size_t>(t.n));
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.param->grad.data(), t.grad, t.n * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_));
  }
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaTrainingPass::DownloadTrainable() {
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  for (CudaTrainable& t : trainable_) {
    t.param->value.resize(static_cast<size_t>(t.n));
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.param->value.data(), t.master, t.n * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream_));
  }
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

absl::Status CudaTrainingPass::UploadTrainable() {
  LP_CUDA_RETURN_IF_ERROR(cudaSetDevice(options_.device));
  for (CudaTrainable& t : trainable_) {
    if (t.param->NumElements() != t.n) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.param->name, "' has ",
                                                     t.param->NumElements(),
                                                     " values; the pass "
                                                     "holds ",
                                                     t.n));
    }
  }
  for (CudaTrainable& t : trainable_) {
    LP_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(t.master, t.param->value.data(), t.n * sizeof(float),
                                            cudaMemcpyHostToDevice, stream_));
    LP_CUDA_RETURN_IF_ERROR(cuda::CastF32ToBF16(t.master, t.weight, t.n, stream_));
  }
  LP_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  return absl::OkStatus();
}

}  // namespace llamapro
