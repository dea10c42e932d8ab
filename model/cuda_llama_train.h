// Training forward and backward of LLaMA/Mistral on one CUDA device, mixed
// precision (DESIGN.md: Precision): the CUDA counterpart of TrainingPass
// (model/llama_train.h), with the same contract and the same frozen-aware
// rules, built from the kernels in kernels/cuda/.
//
//   * Every weight lives on the device in bf16 (the copy the forward reads).
//   * Trainable tensors also get an fp32 master copy and an fp32 gradient
//     buffer on the device; frozen tensors get neither.
//   * Activations are bf16; norms' inverse RMS, attention's log-sum-exp, the
//     loss and every gradient accumulation are fp32.
//   * Nothing below the lowest trainable block is differentiated or kept;
//     frozen blocks above it compute input gradients only.
//   * Every device buffer of a step (weights, masters, gradients, activations,
//     scratch, the cuBLASLt workspace) is allocated by Create; a pass
//     allocates nothing, so an out-of-memory shows at Create, naming the
//     bytes it needed, never at step 1000.
//
// Not supported on this backend (Create refuses them, naming the feature):
// LoRA adapters, MoE experts and tensor parallelism (use the CPU backend);
// a head_dim above kMaxAttentionHeadDim or odd.
//
// Compiled only when LLAMAPRO_HAVE_CUDA. Not thread-safe: one thread drives a
// pass, and the pass owns its stream.
#ifndef LLAMAPRO_MODEL_CUDA_LLAMA_TRAIN_H_
#define LLAMAPRO_MODEL_CUDA_LLAMA_TRAIN_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/llama_params.h"
#include "model/llama_train.h"

namespace llamapro {

// Activation recomputation per differentiated block (job config
// `recompute`): what the forward keeps for the backward.
//   kNone:      everything the backward reads (fastest, most memory).
//   kAttention: the block input, and the MLP half's activations; the
//               attention half (norm, q/k/v, RoPE, attention) is recomputed
//               from the block input in the backward.
//   kFull:      the block input only; the whole block forward is recomputed
//               in the backward.
// Results are bit-identical across modes (the recomputation runs the same
// kernels on the same inputs).
enum class Recompute { kNone, kAttention, kFull };

// "none", "attention", "full".
absl::string_view RecomputeName(Recompute mode);
// Parses RecomputeName's strings; InvalidArgument naming the value and the
// accepted ones otherwise.
absl::StatusOr<Recompute> ParseRecompute(absl::string_view text);

struct CudaPassOptions {
  int device = 0;  // CUDA device ordinal; Create makes it current on the calling thread.
  int64_t batch = 1;
  int64_t seq_len = 0;
  bool for_training = true;  // false: Evaluate/Logits only, no activations kept.
  Recompute recompute = Recompute::kNone;
  // Rows of logits materialised at once for the lm_head + cross-entropy
  // (0: chosen so that the chunk's bf16 logits take at most 256 MiB).
  int64_t logits_chunk_rows = 0;
};

// One trainable tensor on the device. Pointers stay valid for the pass's
// lifetime; `n` elements each.
struct CudaTrainable {
  Parameter* param = nullptr;  // The host tensor: name, shape, decay.
  float* master = nullptr;     // fp32 master weights.
  float* grad = nullptr;       // fp32 gradient, accumulated by ForwardBackward.
  // The bf16 copy the forward reads; the optimizer refreshes it from master.
  uint16_t* weight = nullptr;
  int64_t n = 0;
};

// Device bytes a pass holds, by kind (Create's plan; what it allocated).
struct CudaMemory {
  int64_t weight_bytes = 0;      // bf16 weights, every tensor.
  int64_t master_bytes = 0;      // fp32 masters of the trainable tensors.
  int64_t gradient_bytes = 0;    // fp32 gradients of the trainable tensors.
  int64_t activation_bytes = 0;  // Kept for the backward, all differentiated blocks.
  int64_t scratch_bytes = 0;     // Work buffers, logits chunk, GEMM workspace.
  int64_t total() const {
    return weight_bytes + master_bytes + gradient_bytes + activation_bytes + scratch_bytes;
  }
};

// Told when gradients are final during ForwardBackward, so that data-parallel
// all-reduces can overlap the rest of the backward (train/cuda_data_parallel.h).
class GradientReadyListener {
 public:
  virtual ~GradientReadyListener() = default;
  // `ready` are trainable tensors whose gradients will not change again in
  // this call: every kernel writing them has been enqueued on `stream`
  // before this call (make another stream wait with an event recorded on
  // `stream`). Called in backward order: the lm_head / final norm group,
  // then each trainable block from the top down, then the embedding. Each
  // trainable tensor appears exactly once per call. A non-ok status aborts
  // the pass with it.
  virtual absl::Status GradientsReady(std::span<CudaTrainable* const> ready,
                                      cudaStream_t stream) = 0;
};

class CudaTrainingPass {
 public:
  // Uploads `params` (bf16 weights; fp32 masters of the trainable tensors)
  // and allocates every buffer. The trainable flags are read here; build a
  // new pass when they change. `params` must outlive the pass; its host
  // values are not read again until UploadTrainable. Errors:
  // FailedPrecondition (no such device, naming the ordinal and how many
  // there are), ResourceExhausted (the plan does not fit: the bytes needed
  // by kind and the device's free memory), InvalidArgument (unsupported
  // features, bad sizes), Internal (a failed CUDA/cuBLASLt call, naming it).
  static absl::StatusOr<std::unique_ptr<CudaTrainingPass>> Create(LlamaParams* params,
                                                                  const CudaPassOptions& options);
  // The bytes Create would allocate, without touching a device (for plans
  // and for the refusal message).
  static CudaMemory PlanMemory(const LlamaParams& params, const CudaPassOptions& options);
  ~CudaTrainingPass();
  CudaTrainingPass(const CudaTrainingPass&) = delete;
  CudaTrainingPass& operator=(const CudaTrainingPass&) = delete;

  // As TrainingPass::ForwardBackward: `tokens` holds batch rows of seq_len + 1
  // ids, `mask` the same layout (or empty for all ones). Adds grad_scale *
  // d(loss sum)/d(param) to every trainable tensor's device gradient and
  // returns the loss sum (fp32 per row, summed in double on the host). Token
  // ids are validated (InvalidArgument naming the position). Blocks until
  // the pass's stream is done with the step. `listener` (may be nullptr) is
  // told as gradients become final.
  absl::StatusOr<LossSum> ForwardBackward(std::span<const int32_t> tokens,
                                          std::span<const uint8_t> mask, float grad_scale,
                                          GradientReadyListener* listener = nullptr);
  // The loss sum only; no gradients.
  absl::StatusOr<LossSum> Evaluate(std::span<const int32_t> tokens, std::span<const uint8_t> mask);
  // The fp32 logits [batch * seq_len, V] of the inputs of `tokens` (laid out
  // as for Evaluate). For tests; allocates host memory for the result.
  absl::StatusOr<std::vector<float>> Logits(std::span<const int32_t> tokens);

  // Sets every trainable gradient to zero (enqueued on stream()).
  absl::Status ZeroGradients();
  // Copies the device gradients into each trainable Parameter::grad (tests).
  absl::Status DownloadGradients();
  // Copies the fp32 masters into each trainable Parameter::value (before a
  // checkpoint or an evaluation on the host).
  absl::Status DownloadTrainable();
  // Copies each trainable Parameter::value into its master and bf16 copy
  // (after a resume replaced the host values).
  absl::Status UploadTrainable();

  std::vector<CudaTrainable>& trainable() { return trainable_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return options_.device; }
  const CudaPassOptions& options() const { return options_; }
  const FlopCount& flops_per_token() const { return flops_; }
  int64_t lowest_backward_block() const { return lowest_; }
  const CudaMemory& memory() const { return memory_; }

 private:
  struct Impl;
  CudaTrainingPass(LlamaParams* params, const CudaPassOptions& options);

  LlamaParams* params_;
  CudaPassOptions options_;
  cudaStream_t stream_ = nullptr;
  std::vector<CudaTrainable> trainable_;
  FlopCount flops_;
  int64_t lowest_ = 0;
  CudaMemory memory_;
  std::unique_ptr<Impl> impl_;  // Device buffers, GEMM handle, kernels' state.
};

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_CUDA_LLAMA_TRAIN_H_
