// Optimizers over the trainable parameters of a model: AdamW (PyTorch's
// torch.optim.AdamW, decoupled weight decay) and plain SGD, plus global-norm
// gradient clipping.
//
// An optimizer holds non-owning pointers to the trainable Parameters it was
// built with (they must outlive it) and owns one fp32 state tensor per
// parameter and kind (AdamW: "exp_avg.<name>" and "exp_avg_sq.<name>"; SGD
// with momentum: "momentum_buffer.<name>"), allocated, zeroed, at
// construction: Step() allocates nothing. Frozen parameters are never given
// to an optimizer, so they have no state.
//
// Determinism: every update and reduction visits parameters in construction
// order and elements in index order on one thread, so equal inputs give
// bit-identical results, and a run restored through StateTensors() /
// LoadStateTensor() / set_step() continues exactly as an uninterrupted one.
//
// Not thread-safe: one thread drives an optimizer.
#ifndef LLAMAPRO_TRAIN_OPTIMIZER_H_
#define LLAMAPRO_TRAIN_OPTIMIZER_H_

#include <cmath>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "model/parameters.h"

namespace llamapro {

struct OptimizerConfig {
  std::string name = "adamw";  // "adamw" or "sgd".
  double lr = 0;               // Peak learning rate; the schedule scales it per step.
  double beta1 = 0.9;          // AdamW only.
  double beta2 = 0.95;         // AdamW only.
  double eps = 1e-8;           // AdamW only.
  // AdamW: decoupled, p -= lr * weight_decay * p. SGD: L2 as torch.optim.SGD
  // does, g += weight_decay * p. Either way only where Parameter::decay.
  double weight_decay = 0.1;
  double momentum = 0;          // SGD only; 0 = none.
  double clip_grad_norm = 1.0;  // Max global gradient L2 norm; 0 = no clipping.
};

// The checks MakeOptimizer makes of `config` (InvalidArgument naming the
// field). Inline: the CUDA optimizer (train/cuda_optimizer.h) makes them too
// without linking this library.
inline absl::Status CheckOptimizerConfig(const OptimizerConfig& config) {
  auto bad = [](absl::string_view field, double value, absl::string_view want) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer ", field, " = ", value, ": must be ", want));
  };
  if (config.name != "adamw" && config.name != "sgd") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown optimizer '", config.name, "': choose adamw or sgd"));
  }
  if (!(config.beta1 >= 0 && config.beta1 < 1)) return bad("beta1", config.beta1, "in [0, 1)");
  if (!(config.beta2 >= 0 && config.beta2 < 1)) return bad("beta2", config.beta2, "in [0, 1)");
  if (!(config.eps > 0) || !std::isfinite(config.eps)) return bad("eps", config.eps, "positive");
  if (!(config.weight_decay >= 0) || !std::isfinite(config.weight_decay)) {
    return bad("weight_decay", config.weight_decay, "non-negative");
  }
  if (!(config.momentum >= 0 && config.momentum < 1)) {
    return bad("momentum", config.momentum, "in [0, 1)");
  }
  if (!(config.clip_grad_norm >= 0) || !std::isfinite(config.clip_grad_norm)) {
    return bad("clip_grad_norm", config.clip_grad_norm, "non-negative (0 = off)");
  }
  return absl::OkStatus();
}

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // "adamw" or "sgd".
  virtual absl::string_view name() const = 0;

  // One update of every parameter from its current `grad` at learning rate
  // `lr`, then step() + 1. Gradients are read, never zeroed or clipped: call
  // ClipGradNorm before and ZeroGradients after as the training loop needs.
  void Step(double lr);

  // Updates done so far (AdamW's bias correction uses it). set_step restores
  // it from a checkpoint, together with LoadStateTensor.
  int64_t step() const { return step_; }
  void set_step(int64_t step) { step_ = step; }

  const std::vector<Parameter*>& parameters() const { return params_; }

  // Bytes of optimizer state (4 per state element).
  int64_t StateBytes() const;

  // Every state tensor, named, in a fixed order (per parameter in
  // construction order, kinds in a fixed order within). The pointers stay
  // valid for the optimizer's lifetime.
  std::vector<std::pair<std::string, const std::vector<float>*>> StateTensors() const;

  // Replaces the state tensor `name` (as StateTensors() names it) with
  // `values`. Errors: an unknown name (NotFound) or a size other than the
  // parameter's (InvalidArgument), each naming the tensor.
  absl::Status LoadStateTensor(absl::string_view name, const std::vector<float>& values);

 protected:
  explicit Optimizer(std::vector<Parameter*> params) : params_(std::move(params)) {}

  // Adds a zeroed state tensor "<kind>.<param name>" for every parameter and
  // returns them, indexed like parameters(). Constructors only.
  std::vector<std::vector<float>>& AddStateKind(absl::string_view kind);

  // The update for update number `step` (1 for the first).
  virtual void Update(double lr, int64_t step) = 0;

 private:
  std::vector<Parameter*> params_;
  int64_t step_ = 0;
  std::vector<std::string> kinds_;
  // state_[k][i]: kind k of parameter i (a deque, so the references
  // AddStateKind hands out stay valid).
  std::deque<std::vector<std::vector<float>>> state_;
  absl::flat_hash_map<std::string, std::pair<size_t, size_t>> by_name_;  // -> (kind, param).
};

// Checks `config` and `trainable` and builds the optimizer. Errors
// (InvalidArgument, naming the field or parameter): an unknown name; betas
// outside [0, 1); eps <= 0; negative weight decay or momentum >= 1; a null,
// frozen or duplicate parameter, or one whose grad is not value-sized.
// An empty list is allowed (the optimizer then does nothing).
absl::StatusOr<std::unique_ptr<Optimizer>> MakeOptimizer(const OptimizerConfig& config,
                                                         std::vector<Parameter*> trainable);

// sqrt(sum of grad^2 over all parameters), accumulated in double in parameter
// then element order.
double GlobalGradNorm(const std::vector<Parameter*>& params);
// grad *= scale, for every parameter.
void ScaleGradients(const std::vector<Parameter*>& params, float scale);
// grad = 0, for every parameter.
void ZeroGradients(const std::vector<Parameter*>& params);
// torch.nn.utils.clip_grad_norm_: with n = GlobalGradNorm, if max_norm > 0 and
// max_norm / (n + 1e-6) < 1, scales every grad by that factor. Returns n (the
// norm before clipping), for logging.
double ClipGradNorm(const std::vector<Parameter*>& params, double max_norm);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_OPTIMIZER_H_
