#include "model/llama.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "base/status_macros.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/reference.h"
#include "model/rope.h"

namespace llamapro {

LlamaForward::LlamaForward(const LlamaConfig& config, int64_t batch, int64_t seq_len)
    : config_(config), batch_(batch), seq_len_(seq_len), rows_(batch * seq_len) {
  LP_CHECK(batch > 0 && seq_len > 0);
  const int64_t c = config.hidden_size;
  const int64_t q = config.num_attention_heads * config.head_dim;
  const int64_t kv = config.num_key_value_heads * config.head_dim;
  const int64_t f = config.intermediate_size;
  // Tables in float, following transformers' float32 arithmetic.
  ref::RopeTables(RopeInverseFrequencies<float>(config), seq_len, &cos_, &sin_);
  x_.resize(rows_ * c);
  xn_.resize(rows_ * c);
  q_.resize(rows_ * q);
  k_.resize(rows_ * kv);
  v_.resize(rows_ * kv);
  attn_.resize(rows_ * q);
  branch_.resize(rows_ * c);
  gate_.resize(rows_ * f);
  up_.resize(rows_ * f);
  scratch_.resize(cpu::AttentionScratchSize(seq_len));
  logits_.resize(rows_ * config.vocab_size);
}

absl::Status LlamaForward::Embed(const HeadWeights& head, std::span<const int32_t> tokens) {
  if (static_cast<int64_t>(tokens.size()) != rows_) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", rows_, " tokens (", batch_, " x ",
                                                   seq_len_, "), got ", tokens.size()));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i], " at position ", i,
                                                     " is outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  cpu::Embedding(head.embed.data(), tokens.data(), x_.data(), rows_, config_.hidden_size);
  return absl::OkStatus();
}

void LlamaForward::Block(const BlockWeights& w) {
  const int64_t c = config_.hidden_size;
  const int64_t h = config_.num_attention_heads;
  const int64_t hkv = config_.num_key_value_heads;
  const int64_t d = config_.head_dim;
  const int64_t f = config_.intermediate_size;
  auto bias = [](const std::vector<float>& b) { return b.empty() ? nullptr : b.data(); };
  const float eps = static_cast<float>(config_.rms_norm_eps);

  // Attention branch.
  cpu::RmsNorm(x_.data(), w.input_norm.data(), xn_.data(), rows_, c, eps);
  cpu::Linear(xn_.data(), w.q_proj.data(), bias(w.q_bias), q_.data(), rows_, c, h * d);
  cpu::Linear(xn_.data(), w.k_proj.data(), bias(w.k_bias), k_.data(), rows_, c, hkv * d);
  cpu::Linear(xn_.data(), w.v_proj.data(), bias(w.v_bias), v_.data(), rows_, c, hkv * d);
  cpu::ApplyRope(q_.data(), cos_.data(), sin_.data(), batch_, seq_len_, h, d);
  cpu::ApplyRope(k_.data(), cos_.data(), sin_.data(), batch_, seq_len_, hkv, d);
  cpu::Attention(q_.data(), k_.data(), v_.data(), attn_.data(), batch_, seq_len_, h, hkv, d,
                 config_.sliding_window, scratch_.data());
  cpu::Linear(attn_.data(), w.o_proj.data(), bias(w.o_bias), branch_.data(), rows_, h * d, c);
  cpu::AddInPlace(x_.data(), branch_.data(), rows_ * c);

  // MLP branch.
  cpu::RmsNorm(x_.data(), w.post_norm.data(), xn_.data(), rows_, c, eps);
  cpu::Linear(xn_.data(), w.gate_proj.data(), bias(w.gate_bias), gate_.data(), rows_, c, f);
  cpu::Linear(xn_.data(), w.up_proj.data(), bias(w.up_bias), up_.data(), rows_, c, f);
  cpu::SiluMul(gate_.data(), up_.data(), gate_.data(), rows_ * f);
  cpu::Linear(gate_.data(), w.down_proj.data(), bias(w.down_bias), branch_.data(), rows_, f, c);
  cpu::AddInPlace(x_.data(), branch_.data(), rows_ * c);
}

const std::vector<float>& LlamaForward::Logits(const HeadWeights& head) {
  const int64_t c = config_.hidden_size;
  cpu::RmsNorm(x_.data(), head.final_norm.data(), xn_.data(), rows_, c,
               static_cast<float>(config_.rms_norm_eps));
  const std::vector<float>& lm_head = head.lm_head.empty() ? head.embed : head.lm_head;
  cpu::Linear(xn_.data(), lm_head.data(), nullptr, logits_.data(), rows_, c, config_.vocab_size);
  return logits_;
}

namespace {

// This forward pass has one MLP per block: refuse the MoE baseline's
// checkpoints rather than ignore their second expert.
absl::Status CheckNotMoe(const LlamaConfig& config, const CheckpointReader& reader) {
  if (config.moe_experts == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat(reader.dir(), " is an MoE-baseline checkpoint (", config.moe_experts,
                   " experts per MLP): only the training engine runs it (train, eval ppl)"));
}

}  // namespace

absl::StatusOr<LlamaWeights> LoadLlamaWeights(const CheckpointReader& reader,
                                              const LlamaConfig& config) {
  LP_RETURN_IF_ERROR(CheckNotMoe(config, reader));
  LP_RETURN_IF_ERROR(ValidateCheckpoint(config, reader));
  LlamaWeights weights;
  LP_ASSIGN_OR_RETURN(weights.head, LoadHeadWeights(reader, config));
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    LP_ASSIGN_OR_RETURN(BlockWeights block, LoadBlockWeights(reader, config, layer));
    weights.blocks.push_back(std::move(block));
  }
  return weights;
}

absl::StatusOr<std::vector<float>> ForwardLogits(const LlamaConfig& config,
                                                 const LlamaWeights& weights,
                                                 std::span<const int32_t> tokens, int64_t batch,
                                                 int64_t seq_len) {
  LlamaForward pass(config, batch, seq_len);
  LP_RETURN_IF_ERROR(pass.Embed(weights.head, tokens));
  for (const BlockWeights& block : weights.blocks) pass.Block(block);
  return pass.Logits(weights.head);
}

absl::StatusOr<std::vector<float>> StreamingLogits(const CheckpointReader& reader,
                                                   const LlamaConfig& config,
                                                   std::span<const int32_t> tokens, int64_t batch,
                                                   int64_t seq_len,
                                                   std::optional<DType> round_through) {
  LP_RETURN_IF_ERROR(CheckNotMoe(config, reader));
  LP_RETURN_IF_ERROR(ValidateCheckpoint(config, reader));
  LP_ASSIGN_OR_RETURN(HeadWeights head, LoadHeadWeights(reader, config, round_through));
  LlamaForward pass(config, batch, seq_len);
  LP_RETURN_IF_ERROR(pass.Embed(head, tokens));
  for (int64_t layer = 0; layer < config.num_hidden_layers; ++layer) {
    LP_ASSIGN_OR_RETURN(BlockWeights block, LoadBlockWeights(reader, config, layer, round_through));
    pass.Block(block);
  }
  return pass.Logits(head);
}

}  // namespace llamapro
