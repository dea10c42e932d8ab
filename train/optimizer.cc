#include "train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/check.h"

namespace llamapro {

void Optimizer::Step(double lr) {
  ++step_;
  Update(lr, step_);
}

int64_t Optimizer::StateBytes() const {
  int64_t bytes = 0;
  for (const auto& kind : state_) {
    for (const std::vector<float>& tensor : kind) {
      bytes += static_cast<int64_t>(tensor.size() * sizeof(float));
    }
  }
  return bytes;
}

std::vector<std::pair<std::string, const std::vector<float>*>> Optimizer::StateTensors() const {
  std::vector<std::pair<std::string, const std::vector<float>*>> tensors;
  tensors.reserve(params_.size() * kinds_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    for (size_t k = 0; k < kinds_.size(); ++k) {
      tensors.emplace_back(absl::StrCat(kinds_[k], ".", params_[i]->name), &state_[k][i]);
    }
  }
  return tensors;
}

absl::Status Optimizer::LoadStateTensor(absl::string_view name, const std::vector<float>& values) {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    return absl::NotFoundError(absl::StrCat("optimizer state tensor '", name,
                                            "' is unknown to this ", this->name(),
                                            " optimizer (it has ", absl::StrJoin(kinds_, ".*, "),
                                            ".* for ", params_.size(), " trainable parameters)"));
  }
  const auto [k, i] = it->second;
  std::vector<float>& tensor = state_[k][i];
  if (values.size() != tensor.size()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer state tensor '", name, "' has ",
                                                   values.size(), " values; parameter '",
                                                   params_[i]->name, "' needs ", tensor.size()));
  }
  tensor = values;
  return absl::OkStatus();
}

std::vector<std::vector<float>>& Optimizer::AddStateKind(absl::string_view kind) {
  const size_t k = kinds_.size();
  kinds_.emplace_back(kind);
  std::vector<std::vector<float>>& tensors = state_.emplace_back();
  tensors.reserve(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    tensors.emplace_back(params_[i]->value.size(), 0.0f);
    by_name_[absl::StrCat(kind, ".", params_[i]->name)] = {k, i};
  }
  return tensors;
}

namespace {

// torch.optim.AdamW (_single_tensor_adamw, PyTorch 1.13), element by element,
// in fp32 with the scalars rounded to fp32 where PyTorch's CPU kernels round
// them:
//   p = p * (1 - lr * wd)                       (only where Parameter::decay)
//   m = m * b1 + (1 - b1) * g
//   v = v * b2 + (1 - b2) * g * g
//   p = p + (-lr / bc1) * (m / (sqrt(v) / sqrt(bc2) + eps))
// with bc1 = 1 - b1^t, bc2 = 1 - b2^t computed in double.
class AdamW : public Optimizer {
 public:
  AdamW(const OptimizerConfig& config, std::vector<Parameter*> params)
      : Optimizer(std::move(params)),
        config_(config),
        exp_avg_(AddStateKind("exp_avg")),
        exp_avg_sq_(AddStateKind("exp_avg_sq")) {}

  absl::string_view name() const override { return "adamw"; }

 private:
  void Update(double lr, int64_t step) override {
    const double t = static_cast<double>(step);
    const double bias_correction1 = 1.0 - std::pow(config_.beta1, t);
    const double bias_correction2 = 1.0 - std::pow(config_.beta2, t);
    const float decay_factor = static_cast<float>(1.0 - lr * config_.weight_decay);
    const float beta1 = static_cast<float>(config_.beta1);
    const float beta2 = static_cast<float>(config_.beta2);
    const float one_minus_beta1 = static_cast<float>(1.0 - config_.beta1);
    const float one_minus_beta2 = static_cast<float>(1.0 - config_.beta2);
    const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
    const float bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    const float eps = static_cast<float>(config_.eps);
    const std::vector<Parameter*>& params = parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      Parameter& param = *params[i];
      float* p = param.value.data();
      const float* g = param.grad.data();
      float* m = exp_avg_[i].data();
      float* v = exp_avg_sq_[i].data();
      const size_t n = param.value.size();
      if (param.decay && config_.weight_decay != 0) {
        for (size_t j = 0; j < n; ++j) p[j] = p[j] * decay_factor;
      }
      for (size_t j = 0; j < n; ++j) {
        m[j] = m[j] * beta1 + one_minus_beta1 * g[j];
        v[j] = v[j] * beta2 + one_minus_beta2 * g[j] * g[j];
        const float denom = std::sqrt(v[j]) / bias_correction2_sqrt + eps;
        p[j] = p[j] + neg_step_size * (m[j] / denom);
      }
    }
  }

  OptimizerConfig config_;
  std::vector<std::vector<float>>& exp_avg_;
  std::vector<std::vector<float>>& exp_avg_sq_;
};

// torch.optim.SGD: g' = g + wd * p (only where Parameter::decay); with
// momentum, buf = g' on the first update and buf = momentum * buf + g' after,
// and g' = buf; then p = p - lr * g'.
class Sgd : public Optimizer {
 public:
  Sgd(const OptimizerConfig& config, std::vector<Parameter*> params)
      : Optimizer(std::move(params)),
        config_(config),
        momentum_buffer_(config.momentum != 0 ? &AddStateKind("momentum_buffer") : nullptr) {}

  absl::string_view name() const override { return "sgd"; }

 private:
  void Update(double lr, int64_t step) override {
    const float neg_lr = static_cast<float>(-lr);
    const float weight_decay = static_cast<float>(config_.weight_decay);
    const float momentum = static_cast<float>(config_.momentum);
    const std::vector<Parameter*>& params = parameters();
    for (size_t i = 0; i < params.size(); ++i) {
      Parameter& param = *params[i];
      float* p = param.value.data();
      const float* g = param.grad.data();
      const size_t n = param.value.size();
      const bool decay = param.decay && config_.weight_decay != 0;
      float* buf = momentum_buffer_ != nullptr ? (*momentum_buffer_)[i].data() : nullptr;
      for (size_t j = 0; j < n; ++j) {
        float d = decay ? g[j] + weight_decay * p[j] : g[j];
        if (buf != nullptr) {
          buf[j] = step == 1 ? d : buf[j] * momentum + d;
          d = buf[j];
        }
        p[j] = p[j] + neg_lr * d;
      }
    }
  }

  OptimizerConfig config_;
  std::vector<std::vector<float>>* momentum_buffer_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Optimizer>> MakeOptimizer(const OptimizerConfig& config,
                                                         std::vector<Parameter*> trainable) {
  if (absl::Status status = CheckOptimizerConfig(config); !status.ok()) return status;
  absl::flat_hash_set<absl::string_view> names;
  for (size_t i = 0; i < trainable.size(); ++i) {
    const Parameter* param = trainable[i];
    if (param == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("trainable parameter #", i, " is null"));
    }
    if (!param->trainable) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", param->name, "' is frozen; optimizers take trainable ones"));
    }
    if (param->grad.size() != param->value.size()) {
      return absl::InvalidArgumentError(absl::StrCat("parameter '", param->name, "' has ",
                                                     param->grad.size(), " gradient values for ",
                                                     param->value.size(), " values"));
    }
    if (!names.insert(param->name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter '", param->name, "' is given to the optimizer twice"));
    }
  }
  if (config.name == "sgd") return std::make_unique<Sgd>(config, std::move(trainable));
  return std::make_unique<AdamW>(config, std::move(trainable));
}

double GlobalGradNorm(const std::vector<Parameter*>& params) {
  double sum = 0;
  for (const Parameter* param : params) {
    for (float g : param->grad) sum += static_cast<double>(g) * static_cast<double>(g);
  }
  return std::sqrt(sum);
}

void ScaleGradients(const std::vector<Parameter*>& params, float scale) {
  for (Parameter* param : params) {
    for (float& g : param->grad) g *= scale;
  }
}

void ZeroGradients(const std::vector<Parameter*>& params) {
  for (Parameter* param : params) std::fill(param->grad.begin(), param->grad.end(), 0.0f);
}

double ClipGradNorm(const std::vector<Parameter*>& params, double max_norm) {
  LP_CHECK(max_norm >= 0);
  const double norm = GlobalGradNorm(params);
  if (max_norm > 0) {
    const double coef = max_norm / (norm + 1e-6);
    if (coef < 1) ScaleGradients(params, static_cast<float>(coef));
  }
  return norm;
}

}  // namespace llamapro
