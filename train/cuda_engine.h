// The CUDA backend of the training loop (RunTraining with `device: cuda:N`):
// one CudaTrainingPass (model/cuda_llama_train.h) and CudaAdamW
// (train/cuda_optimizer.h) on one device, gradients all-reduced over NCCL in
// buckets overlapped with the backward when the job has several ranks, and
// the bridge to the host for checkpoints (the same files the CPU backend
// writes, so either backend resumes the other's run).
//
// What it does not run (Create refuses, naming the config key): tensor
// parallelism, ZeRO-1, LoRA, MoE, SGD. Compiled only when LLAMAPRO_HAVE_CUDA.
#ifndef LLAMAPRO_TRAIN_CUDA_ENGINE_H_
#define LLAMAPRO_TRAIN_CUDA_ENGINE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/cuda_llama_train.h"
#include "model/llama_params.h"
#include "train/config.h"
#include "train/cuda_optimizer.h"
#include "train/optimizer.h"

namespace llamapro {

class NcclCommunicator;
class NcclGradientReducer;

struct CudaEngineOptions {
  int device = 0;
  int64_t micro_batch = 1;
  int64_t seq_len = 0;
  Recompute recompute = Recompute::kNone;
  OptimizerConfig optimizer;
  // The job's ranks over NCCL (data parallelism); nullptr for one rank.
  NcclCommunicator* nccl = nullptr;
};

class CudaTrainingEngine {
 public:
  // Uploads `params` (its trainable flags set) and allocates everything a
  // step needs on the device. `params` must outlive the engine.
  static absl::StatusOr<std::unique_ptr<CudaTrainingEngine>> Create(
      LlamaParams* params, const CudaEngineOptions& options);
  ~CudaTrainingEngine();

  // Checks what the CUDA backend cannot run, naming the config key
  // (InvalidArgument, prefixed with config.source).
  static absl::Status CheckSupported(const JobConfig& config);

  absl::Status ZeroGradients();
  // One micro-batch; on the last of a step the data-parallel all-reduce of
  // each gradient bucket starts as soon as the backward has finished it.
  absl::StatusOr<LossSum> ForwardBackward(std::span<const int32_t> tokens,
                                          std::span<const uint8_t> mask, float grad_scale,
                                          bool last_micro_batch);
  // Waits for the all-reduces, then the global norm and clipping on the
  // device; returns the norm before clipping.
  absl::StatusOr<double> FinishGradients();
  absl::Status Step(double lr);
  absl::StatusOr<LossSum> Evaluate(std::span<const int32_t> tokens, std::span<const uint8_t> mask);

  // Copies the trained masters into the host parameters and returns a host
  // optimizer holding the device optimizer's state (for WriteTrainingCheckpoint).
  absl::StatusOr<std::unique_ptr<Optimizer>> DownloadForCheckpoint();
  // Restores the optimizer state of a resumed run from `host` (every state
  // tensor and the step count).
  absl::Status UploadOptimizerState(const Optimizer& host);

  const CudaTrainingPass& pass() const { return *pass_; }
  int64_t optimizer_state_bytes() const;
  // "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"
  std::string device_description() const;

 private:
  CudaTrainingEngine() = default;
  LlamaParams* params_ = nullptr;
  OptimizerConfig optimizer_config_;
  std::unique_ptr<CudaTrainingPass> pass_;
  std::unique_ptr<CudaAdamW> optimizer_;
  std::unique_ptr<NcclGradientReducer> reducer_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_CUDA_ENGINE_H_
