// AdamW and global-norm clipping on the device, over the trainable tensors of
// a CudaTrainingPass (model/cuda_llama_train.h): fp32 masters, gradients and
// state, one multi-tensor launch per update (kernels/cuda/adamw.cuh), the
// clip computed and applied on the device (kernels/cuda/global_norm.cuh).
// The update is train/optimizer.cc's AdamW bit for bit on equal inputs; each
// update also refreshes the bf16 copy the forward reads.
//
// State names are the CPU optimizer's ("exp_avg.<name>", "exp_avg_sq.<name>"),
// so checkpoints written from either backend resume on the other.
//
// Compiled only when LLAMAPRO_HAVE_CUDA. Not thread-safe; it enqueues on the
// pass's stream.
#ifndef LLAMAPRO_TRAIN_CUDA_OPTIMIZER_H_
#define LLAMAPRO_TRAIN_CUDA_OPTIMIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/cuda_llama_train.h"
#include "train/optimizer.h"

namespace llamapro {

class CudaAdamW {
 public:
  // Allocates zeroed state for every tensor of pass->trainable() and uploads
  // the descriptor arrays. `config.name` must be "adamw" (InvalidArgument
  // otherwise: SGD runs on the CPU backend only); the other fields are
  // checked as MakeOptimizer checks them. `pass` must outlive the optimizer.
  static absl::StatusOr<std::unique_ptr<CudaAdamW>> Create(const OptimizerConfig& config,
                                                           CudaTrainingPass* pass);
  ~CudaAdamW();
  CudaAdamW(const CudaAdamW&) = delete;
  CudaAdamW& operator=(const CudaAdamW&) = delete;

  // The global L2 norm of the gradients (fp64 on the device; read back, so
  // this synchronizes the stream), and, when config.clip_grad_norm > 0, the
  // clip applied on the device as ClipGradNorm does. Returns the norm before
  // clipping.
  absl::StatusOr<double> ClipGradients();
  // One update at learning rate `lr`, then step() + 1 (enqueued; does not
  // synchronize). Gradients are read, never zeroed.
  absl::Status Step(double lr);

  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }
  int64_t StateBytes() const;

  // Every state tensor, named as Optimizer::StateTensors names them, in the
  // same order, copied to the host.
  absl::StatusOr<std::vector<std::pair<std::string, std::vector<float>>>> DownloadState() const;
  // Replaces the state tensor `name`. Errors as Optimizer::LoadStateTensor.
  absl::Status UploadState(absl::string_view name, const std::vector<float>& values);

 private:
  struct Impl;
  CudaAdamW(const OptimizerConfig& config, CudaTrainingPass* pass);
  OptimizerConfig config_;
  CudaTrainingPass* pass_;
  int64_t step_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_CUDA_OPTIMIZER_H_
