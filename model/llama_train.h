// Training forward and backward of LLaMA/Mistral on the CPU (fp32), written
// out per layer, frozen-aware:
//   * nothing below the lowest block that trains is ever differentiated: its
//     activations are not even kept;
//   * frozen blocks above it propagate input gradients only (no weight
//     gradient GEMMs);
//   * the lowest trainable block does not compute the gradient of its own
//     input unless the embedding trains;
//   * gradients exist only for trainable tensors (Parameter::grad).
// All buffers are sized by the constructor; a pass allocates nothing.
#ifndef LLAMAPRO_MODEL_LLAMA_TRAIN_H_
#define LLAMAPRO_MODEL_LLAMA_TRAIN_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "base/collectives.h"
#include "base/parallel.h"
#include "model/llama_params.h"

namespace llamapro {

struct LossSum {
  double loss = 0;      // Sum of -log p(target) over counted targets.
  int64_t targets = 0;  // Targets counted (mask != 0).
};

// FLOPs per token a pass executes (multiply-add = 2 FLOPs; attention counted
// over the full T x T score matrix it computes).
struct FlopCount {
  double forward = 0;
  double backward = 0;
};

// Tensor parallelism for a pass (Megatron-style, DESIGN.md: Parallelism):
// `comm` connects the `size` ranks of one model replica, each holding the
// slices LoadLlamaParams(..., {rank, size}) gives it. Each rank computes its
// heads and its share of the MLP; one all-reduce after o_proj and one after
// down_proj in the forward, one on the input gradient of each block's
// attention and MLP inputs in the backward. The embedding and lm_head are
// vocabulary-parallel: the cross-entropy combines each rank's log-sum-exp
// over its slice of the vocabulary (an all-gather of one value per row) and
// no rank ever holds more than its [rows, vocab / size] logits.
struct TensorParallel {
  Communicator* comm = nullptr;
  int rank = 0;
  int size = 1;
  bool active() const { return size > 1; }
};

// One set of activation buffers for `batch` sequences of `seq_len` inputs.
// The trainable flags of `params` are read at construction; build a new pass
// when they change. With for_training == false only Evaluate may be called
// and no activations for a backward are allocated. Not thread-safe. `params`
// must outlive the pass.
class TrainingPass {
 public:
  // With `private_gradients`, gradients go to buffers of this pass (see
  // private_gradient) instead of Parameter::grad: several passes can then
  // run concurrently on shards of a batch (ParallelTrainingPass).
  TrainingPass(LlamaParams* params, int64_t batch, int64_t seq_len, bool for_training = true,
               bool private_gradients = false, TensorParallel tp = {});

  // `tokens` holds batch rows of seq_len + 1 ids: row b's inputs are its
  // first seq_len ids, its targets the last seq_len. `mask` (same layout, or
  // empty for all ones) says which targets count: mask[b, t + 1] for the
  // target of input position t. Adds grad_scale * d(loss sum)/d(param) to
  // every trainable parameter's gradient and returns the loss sum.
  absl::StatusOr<LossSum> ForwardBackward(std::span<const int32_t> tokens,
                                          std::span<const uint8_t> mask, float grad_scale);
  // The loss sum only (evaluation); no gradients, nothing kept.
  absl::StatusOr<LossSum> Evaluate(std::span<const int32_t> tokens, std::span<const uint8_t> mask);
  // The logits [batch * seq_len, V] of the inputs of `tokens` (laid out as
  // for Evaluate; the last id of each row is not an input); under tensor
  // parallelism this rank's [batch * seq_len, V / size] slice. For tests.
  absl::StatusOr<std::vector<float>> Logits(std::span<const int32_t> tokens);

  // The private gradient buffer of a trainable parameter (nullptr without
  // private gradients or for a frozen parameter).
  std::vector<float>* private_gradient(const Parameter* p);
  // Zeroes every private gradient buffer.
  void ZeroPrivateGradients();

  const FlopCount& flops_per_token() const { return flops_; }
  // The lowest block that is differentiated (num blocks when none is).
  int64_t lowest_backward_block() const { return lowest_; }
  uint64_t ActivationBytes() const;

 private:
  struct BlockActivations {
    std::vector<float> x_in, xn1, inv1, q, k, v, attn, lse, x_mid, xn2, inv2, gate, up;
    std::vector<float> lora_t[kLoraTargets];  // x A^T of each LoRA adapter [rows, rank].
    std::vector<float> gate1, up1, e0, e1;    // MoE: expert 1's gate/up, both experts' outputs.
  };
  absl::Status Prepare(std::span<const int32_t> tokens, std::span<const uint8_t> mask);
  // Runs the blocks and the final norm; with `keep_final` also keeps the
  // final norm's input for the backward.
  LossSum Forward(bool keep_final);
  void BlockForward(int64_t layer, BlockActivations* saved, float* x);
  // dres: gradient w.r.t. the block's output, replaced by the gradient
  // w.r.t. its input when `need_input_grad`.
  void BlockBackward(int64_t layer, bool need_input_grad, float* dres);
  void ComputeFlops();
  float* Grad(Parameter& p);
  // Tensor parallelism: sums `data` over the TP group (nothing without it).
  // The first failure is kept in tp_status_ and later collectives are
  // skipped; the pass returns it.
  void TpAllReduce(float* data, int64_t n);
  void EmbeddingForward();
  // The vocabulary-parallel lm_head + cross-entropy (see TensorParallel).
  double ParallelCrossEntropy(float scale, float* dx, float* dw);

  LlamaParams* params_;
  LlamaConfig config_;
  TensorParallel tp_;
  absl::Status tp_status_;
  // This rank's heads, KV heads, MLP features and vocabulary rows (all of
  // them without tensor parallelism), and its first vocabulary id.
  int64_t heads_, kv_heads_, ffn_, vocab_, vocab_begin_;
  int64_t batch_, seq_len_, rows_;
  bool for_training_;
  int64_t lowest_;
  bool embed_grad_ = false;
  std::vector<float> cos_, sin_;
  std::vector<int32_t> inputs_, targets_;
  std::vector<uint8_t> target_mask_;
  bool all_targets_ = true;
  std::vector<BlockActivations> saved_;  // Indexed by layer; empty below lowest_.
  BlockActivations scratch_;             // Forward of blocks that keep nothing.
  std::vector<float> x_, x_final_, xn_final_, inv_final_;
  // Backward work space.
  std::vector<float> dres_, dxn_, dtmp_, dq_, dk_, dv_, dattn_, dact_, dgate_, dup_, act_;
  std::vector<float> lora_dt_;  // LoRA backward work space [rows, rank].
  // MoE work space: expert 1's activation and backward buffers.
  std::vector<float> moe_act_, moe_dact_, moe_dgate_, moe_dup_, moe_dxn_, moe_dy_;
  std::vector<float> attn_scratch_, lm_scratch_;
  std::vector<float> logits_, row_lse_, gathered_lse_, target_logit_;  // Vocabulary-parallel CE.
  std::map<const Parameter*, std::vector<float>> private_grads_;
  FlopCount flops_;
};

// A TrainingPass split over threads by sequences: `threads` shards (at most
// one per sequence of the batch), each a TrainingPass on its rows running on
// its own thread with single-threaded GEMMs; weight gradients are summed
// into Parameter::grad in a fixed order after each call, so results are
// deterministic for a given thread count. Same contract as TrainingPass.
class ParallelTrainingPass {
 public:
  // Under tensor parallelism (tp.active()) the batch is one shard: the
  // collectives of a pass are driven by one thread.
  ParallelTrainingPass(LlamaParams* params, int64_t batch, int64_t seq_len, int threads,
                       bool for_training = true, TensorParallel tp = {});
  ~ParallelTrainingPass();

  absl::StatusOr<LossSum> ForwardBackward(std::span<const int32_t> tokens,
                                          std::span<const uint8_t> mask, float grad_scale);
  absl::StatusOr<LossSum> Evaluate(std::span<const int32_t> tokens, std::span<const uint8_t> mask);

  const FlopCount& flops_per_token() const { return shards_.front()->flops_per_token(); }
  int64_t lowest_backward_block() const { return shards_.front()->lowest_backward_block(); }
  uint64_t ActivationBytes() const;
  int shards() const { return static_cast<int>(shards_.size()); }

 private:
  absl::StatusOr<LossSum> RunShards(std::span<const int32_t> tokens, std::span<const uint8_t> mask,
                                    bool backward, float grad_scale);
  LlamaParams* params_;
  int64_t seq_len_;
  int threads_;
  std::vector<int64_t> first_row_;  // Per shard, its first sequence; plus the end.
  std::vector<std::unique_ptr<TrainingPass>> shards_;
  std::unique_ptr<ForkJoinPool> pool_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_LLAMA_TRAIN_H_
