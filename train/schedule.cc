#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "base/check.h"

namespace llamapro {

absl::string_view DecayName(ScheduleConfig::Decay decay) {
  switch (decay) {
    case ScheduleConfig::Decay::kCosine:
      return "cosine";
    case ScheduleConfig::Decay::kLinear:
      return "linear";
    case ScheduleConfig::Decay::kConstant:
      return "constant";
  }
  return "unknown";
}

int64_t WarmupSteps(const ScheduleConfig& config, int64_t total_steps) {
  LP_CHECK(total_steps > 0);
  int64_t warmup = 0;
  if (config.warmup_steps >= 0) {
    warmup = config.warmup_steps;
  } else if (config.warmup_ratio > 0) {
    // Rounded to nearest rather than up (as Hugging Face does): ceil turns
    // 0.07 * 100 = 7.000000000000001 into 8.
    warmup =
        std::max<int64_t>(1, std::llround(config.warmup_ratio * static_cast<double>(total_steps)));
  }
  return std::min(warmup, total_steps);
}

double LearningRate(const ScheduleConfig& config, int64_t step, int64_t total_steps) {
  LP_CHECK(total_steps > 0);
  LP_CHECK(step >= 0);
  step = std::min(step, total_steps - 1);
  const int64_t warmup = WarmupSteps(config, total_steps);
  if (step < warmup) {
    return config.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
  }
  if (config.decay == ScheduleConfig::Decay::kConstant) return config.lr;
  const int64_t anchor = std::max<int64_t>(warmup - 1, 0);
  const int64_t span = total_steps - 1 - anchor;
  if (span <= 0) return config.lr;
  const double progress = static_cast<double>(step - anchor) / static_cast<double>(span);
  const double factor = config.decay == ScheduleConfig::Decay::kCosine
                            ? 0.5 * (1.0 + std::cos(std::numbers::pi * progress))
                            : 1.0 - progress;
  return config.min_lr + (config.lr - config.min_lr) * factor;
}

}  // namespace llamapro
