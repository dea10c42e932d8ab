// The LLaMA/Mistral forward pass in fp32 on the CPU, with transformers'
// semantics: pre-norm blocks x' = x + Attn(RMSNorm(x)), y = x' + MLP(RMSNorm(x')),
// GQA, rotate-half RoPE, SiLU-gated MLP, optional biases, tied or untied
// lm_head, Mistral's sliding window.
#ifndef LLAMAPRO_MODEL_LLAMA_H_
#define LLAMAPRO_MODEL_LLAMA_H_

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace llamapro {

// Activations of one forward pass over `batch` sequences of `seq_len` tokens
// (positions 0..seq_len-1). All buffers are allocated by the constructor; the
// pass itself allocates nothing. Use: Embed, Block for each layer in order,
// Logits. Not thread-safe; one object per concurrent pass.
class LlamaForward {
 public:
  LlamaForward(const LlamaConfig& config, int64_t batch, int64_t seq_len);

  // x = embed[tokens]; `tokens` holds batch*seq_len ids, each in [0, V).
  absl::Status Embed(const HeadWeights& head, std::span<const int32_t> tokens);
  // x = block(x).
  void Block(const BlockWeights& w);
  // Final RMSNorm and lm_head: logits [batch*seq_len, V], valid until the next pass.
  const std::vector<float>& Logits(const HeadWeights& head);

  // The residual stream [batch*seq_len, C] (after the last Embed/Block).
  const std::vector<float>& hidden() const { return x_; }

 private:
  LlamaConfig config_;
  int64_t batch_, seq_len_, rows_;
  std::vector<float> cos_, sin_;
  std::vector<float> x_, xn_, q_, k_, v_, attn_, branch_, gate_, up_, scratch_, logits_;
};

struct LlamaWeights {
  HeadWeights head;
  std::vector<BlockWeights> blocks;
};

// Loads every weight as fp32 (validating the checkpoint first).
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const CheckpointReader& reader,
                                              const LlamaConfig& config);

// Logits [batch*seq_len, V] for `tokens` with all weights in memory.
absl::StatusOr<std::vector<float>> ForwardLogits(const LlamaConfig& config,
                                                 const LlamaWeights& weights,
                                                 std::span<const int32_t> tokens, int64_t batch,
                                                 int64_t seq_len);

// The same logits, loading one block at a time from the checkpoint: memory
// stays at one block's fp32 weights plus embedding and lm_head, so models far
// larger than RAM in fp32 can be evaluated. With `round_through`, weights are
// rounded to that dtype first. Bit-identical to ForwardLogits.
absl::StatusOr<std::vector<float>> StreamingLogits(
    const CheckpointReader& reader, const LlamaConfig& config, std::span<const int32_t> tokens,
    int64_t batch, int64_t seq_len, std::optional<DType> round_through = std::nullopt);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_LLAMA_H_
