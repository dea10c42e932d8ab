#include "train/cuda_engine.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "kernels/cuda/device.h"
#include "train/cuda_data_parallel.h"
#include "train/nccl_communicator.h"

namespace llamapro {

namespace {

absl::Status Unsupported(const JobConfig& config, absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      config.source, ": ", key, ": ", what, " on device ", config.device,
      " (the CUDA backend runs data parallelism of dense models with AdamW; use device: cpu)"));
}

}  // namespace

absl::Status CudaTrainingEngine::CheckSupported(const JobConfig& config) {
  if (config.parallel.tp > 1) return Unsupported(config, "parallel.tp", "tensor parallelism");
  if (config.parallel.zero1) return Unsupported(config, "parallel.zero", "ZeRO-1");
  if (config.trainable.mode == TrainableConfig::Mode::kLora) {
    return Unsupported(config, "trainable", "LoRA");
  }
  if (config.trainable.mode == TrainableConfig::Mode::kMoe) {
    return Unsupported(config, "trainable", "the MoE baseline");
  }
  if (config.optimizer.name != "adamw") {
    return Unsupported(config, "optimizer.name", absl::StrCat(config.optimizer.name));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<CudaTrainingEngine>> CudaTrainingEngine::Create(
    LlamaParams* params, const CudaEngineOptions& options) {
  std::unique_ptr<CudaTrainingEngine> engine(new CudaTrainingEngine());
  engine->params_ = params;
  engine->optimizer_config_ = options.optimizer;
  LP_ASSIGN_OR_RETURN(engine->pass_,
                      CudaTrainingPass::Create(params, {.device = options.device,
                                                        .batch = options.micro_batch,
                                                        .seq_len = options.seq_len,
                                                        .for_training = true,
                                                        .recompute = options.recompute}));
  LP_ASSIGN_OR_RETURN(engine->optimizer_,
                      CudaAdamW::Create(options.optimizer, engine->pass_.get()));
  if (options.nccl != nullptr && options.nccl->world_size() > 1) {
    LP_ASSIGN_OR_RETURN(engine->reducer_, NcclGradientReducer::Create(options.nccl, {}));
  }
  return engine;
}

CudaTrainingEngine::~CudaTrainingEngine() = default;

absl::Status CudaTrainingEngine::ZeroGradients() { return pass_->ZeroGradients(); }

absl::StatusOr<LossSum> CudaTrainingEngine::ForwardBackward(std::span<const int32_t> tokens,
                                                            std::span<const uint8_t> mask,
                                                            float grad_scale,
                                                            bool last_micro_batch) {
  GradientReadyListener* listener = last_micro_batch ? reducer_.get() : nullptr;
  return pass_->ForwardBackward(tokens, mask, grad_scale, listener);
}

absl::StatusOr<double> CudaTrainingEngine::FinishGradients() {
  if (reducer_) {
    LP_RETURN_IF_ERROR(reducer_->Finish(pass_->stream()));
    // A bounded wait: a peer that died mid all-reduce ends the step with a
    // timeout here instead of hanging the clip's synchronization.
    LP_RETURN_IF_ERROR(reducer_->Wait());
  }
  return optimizer_->ClipGradients();
}

absl::Status CudaTrainingEngine::Step(double lr) { return optimizer_->Step(lr); }

absl::StatusOr<LossSum> CudaTrainingEngine::Evaluate(std::span<const int32_t> tokens,
                                                     std::span<const uint8_t> mask) {
  return pass_->Evaluate(tokens, mask);
}

absl::StatusOr<std::unique_ptr<Optimizer>> CudaTrainingEngine::DownloadForCheckpoint() {
  LP_RETURN_IF_ERROR(pass_->DownloadTrainable());
  LP_ASSIGN_OR_RETURN(std::unique_ptr<Optimizer> host,
                      MakeOptimizer(optimizer_config_, params_->Trainable()));
  LP_ASSIGN_OR_RETURN(auto state, optimizer_->DownloadState());
  for (const auto& [name, values] : state) LP_RETURN_IF_ERROR(host->LoadStateTensor(name, values));
  host->set_step(optimizer_->step());
  return host;
}

absl::Status CudaTrainingEngine::UploadOptimizerState(const Optimizer& host) {
  for (const auto& [name, values] : host.StateTensors()) {
    LP_RETURN_IF_ERROR(optimizer_->UploadState(name, *values));
  }
  optimizer_->set_step(host.step());
  return absl::OkStatus();
}

int64_t CudaTrainingEngine::optimizer_state_bytes() const { return optimizer_->StateBytes(); }

std::string CudaTrainingEngine::device_description() const {
  return cuda::DeviceDescription(pass_->device());
}

}  // namespace llamapro
