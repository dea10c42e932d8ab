#include "train/parallel_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/units.h"
#include "kernels/cpu/ops.h"

namespace llamapro {
namespace {

// Ring collectives: what each of g ranks sends.
double AllReduceBytes(double bytes, int g) { return g > 1 ? 2.0 * (g - 1) / g * bytes : 0; }
double GatherBytes(double bytes, int g) { return g > 1 ? 1.0 * (g - 1) / g * bytes : 0; }

}  // namespace

ParallelPlan PlanParallel(const ParallelPlanInput& in) {
  const LlamaConfig& m = in.model;
  const int tp = std::max(1, in.tp), dp = std::max(1, in.dp);
  const bool cuda = in.backend == ParallelPlanInput::Backend::kCudaMixed;
  const int64_t c = m.hidden_size, d = m.head_dim;
  const int64_t h = m.num_attention_heads / tp, hkv = m.num_key_value_heads / tp;
  const int64_t f = m.intermediate_size / tp, v = m.vocab_size / tp;
  const int64_t q = h * d, kv = hkv * d;
  const int64_t layers = m.num_hidden_layers;

  // Parameters this rank holds: split tensors by tp, the rest whole.
  const int64_t block = 2 * c + c * (q + 2 * kv) + q * c + 3 * c * f +
                        (m.attention_bias ? q + 2 * kv + c : 0) + (m.mlp_bias ? 2 * f + c : 0);
  const int64_t embed = v * c, head = m.tie_word_embeddings ? 0 : v * c;
  ParallelPlan plan;
  plan.parameters = embed + layers * block + c + head;
  int64_t trainable = 0;
  int64_t lowest = layers;
  for (int64_t i = 0; i < layers; ++i) {
    if (i < static_cast<int64_t>(in.trainable_blocks.size()) && in.trainable_blocks[i]) {
      trainable += block;
      lowest = std::min(lowest, i);
    }
  }
  if (in.embeddings) {
    trainable += embed;
    lowest = 0;
  }
  if (in.final_norm) trainable += c;
  if (in.lm_head) trainable += head;
  plan.trainable = trainable;
  plan.weight_bytes = plan.parameters * (cuda ? 2 : 4);
  plan.gradient_bytes = trainable * 4;
  const int64_t sharded = in.zero1 ? (trainable + dp - 1) / dp : trainable;
  plan.master_bytes = cuda ? sharded * 4 : 0;
  plan.optimizer_bytes = sharded * 4 * in.optimizer_states;

  // Activations: what TrainingPass allocates for one micro-batch (fp32 on
  // the CPU; bf16 for the CUDA design, whose softmax statistics stay fp32).
  const int64_t n = in.micro_batch * in.seq_len;
  const int64_t lse = in.micro_batch * h * in.seq_len;
  // Per block: xn1, xn2, the norms, q, k, v, attention out, gate, up (and,
  // differentiated, its input and mid-block residual).
  const int64_t kept = 2 * n * c + 2 * n + 2 * n * q + 2 * n * kv + 2 * n * f;
  int64_t floats = (layers - lowest) * (kept + 2 * n * c + lse);
  if (lowest > 0 || lowest == layers) floats += kept + lse;  // Forward scratch of frozen blocks.
  floats += 6 * n * c + n + n * f;                           // x, final norm, dres/dxn/dtmp, act.
  if (lowest < layers) floats += 2 * n * q + 2 * n * kv + 3 * n * f;
  floats += std::max(cpu::AttentionScratchSize(in.seq_len),
                     cpu::AttentionBackwardScratchSize(in.seq_len));
  floats += tp > 1 ? n * v + n * (2 + tp) : cpu::LmHeadScratchSize(m.vocab_size);
  plan.activation_bytes = floats * (cuda ? 2 : 4);

  // Collectives per micro-batch under TP: the embedding, o_proj and
  // down_proj outputs forward; the input gradients of every differentiated
  // block's MLP and attention, and of the final norm, backward; and the
  // cross-entropy's per-row log-sum-exp (all-gather) and target logit.
  const int64_t local_sequences = in.global_sequences / dp;
  plan.micro_batches_per_step =
      std::max<int64_t>(1, local_sequences / std::max<int64_t>(1, in.micro_batch));
  if (tp > 1) {
    const double act = static_cast<double>(n * c) * (cuda ? 2 : 4);
    double all_reduces = 1 + 2 * layers;
    if (lowest < layers || in.final_norm) all_reduces += 1;
    for (int64_t i = lowest; i < layers; ++i) {
      const bool input_grad =
          i > lowest || in.embeddings ||
          (i < static_cast<int64_t>(in.trainable_blocks.size()) && in.trainable_blocks[i]);
      all_reduces += input_grad ? 2 : 1;
    }
    const double per_micro = all_reduces * AllReduceBytes(act, tp) + GatherBytes(4.0 * n * tp, tp) +
                             AllReduceBytes(4.0 * n, tp);
    plan.tp_bytes_per_step = per_micro * static_cast<double>(plan.micro_batches_per_step);
  }
  // DP: fp32 gradients of the trainable slices each step; under ZeRO-1 a
  // reduce-scatter of them (on Gloo: an all-reduce) and an all-gather of the
  // updated weights (bf16 on CUDA, fp32 on the CPU).
  const double grads = 4.0 * static_cast<double>(trainable);
  if (!in.zero1) {
    plan.dp_bytes_per_step = AllReduceBytes(grads, dp);
  } else {
    plan.dp_bytes_per_step = (cuda ? GatherBytes(grads, dp) : AllReduceBytes(grads, dp)) +
                             GatherBytes(static_cast<double>(trainable) * (cuda ? 2 : 4), dp);
  }
  return plan;
}

ParallelPlanInput LlamaPro7BPlanInput() {
  ParallelPlanInput in;
  in.model.vocab_size = 32000;
  in.model.hidden_size = 4096;
  in.model.intermediate_size = 11008;
  in.model.num_hidden_layers = 40;
  in.model.num_attention_heads = 32;
  in.model.num_key_value_heads = 32;
  in.model.head_dim = 128;
  in.model.max_position_embeddings = 4096;
  in.trainable_blocks.assign(40, false);
  for (int b = 4; b < 40; b += 5) in.trainable_blocks[b] = true;
  in.seq_len = 4096;
  in.micro_batch = 1;
  in.global_sequences = 1024;
  in.backend = ParallelPlanInput::Backend::kCudaMixed;
  return in;
}

std::string DescribePlan(const ParallelPlan& plan) {
  return absl::StrCat(
      "weights ", FormatBytes(plan.weight_bytes), ", gradients ", FormatBytes(plan.gradient_bytes),
      ", masters ", FormatBytes(plan.master_bytes), ", optimizer ",
      FormatBytes(plan.optimizer_bytes), ", activations ", FormatBytes(plan.activation_bytes),
      "; sent per step: TP ", FormatBytes(static_cast<uint64_t>(plan.tp_bytes_per_step)), ", DP ",
      FormatBytes(static_cast<uint64_t>(plan.dp_bytes_per_step)));
}

}  // namespace llamapro
