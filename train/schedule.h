// Learning-rate schedules: linear warmup, then cosine, linear or constant
// decay (the paper: 6 % warmup then cosine for post-pretraining, 3 % for SFT).
//
// Steps are numbered 0 .. total_steps - 1; LearningRate(step) is the rate
// the optimizer uses for step `step` (i.e. for its (step + 1)-th update).
// With W warmup steps (WarmupSteps below):
//
//   step < W:   lr * (step + 1) / W         (so step W - 1 reaches lr exactly)
//   step >= W:  min_lr + (lr - min_lr) * f(progress)
//               progress = (step - a) / (total_steps - 1 - a), a = max(W - 1, 0)
//               cosine: f = 0.5 * (1 + cos(pi * progress)); linear: f = 1 - progress
//               constant: the rate is lr (min_lr is not used)
//
// i.e. the decay starts from lr at the last warmup step (or at step 0 when
// there is no warmup) and reaches min_lr exactly at the last step. The peak
// is attained once; warmup is strictly increasing and decay non-increasing.
// Everything is a pure function of its arguments (thread-safe).
#ifndef LLAMAPRO_TRAIN_SCHEDULE_H_
#define LLAMAPRO_TRAIN_SCHEDULE_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace llamapro {

struct ScheduleConfig {
  enum class Decay { kCosine, kLinear, kConstant };

  double lr = 0;              // Peak learning rate (> 0).
  double min_lr = 0;          // Final learning rate, in [0, lr].
  double warmup_ratio = 0;    // Fraction of total_steps spent warming up, in [0, 1].
  int64_t warmup_steps = -1;  // If >= 0, wins over warmup_ratio.
  Decay decay = Decay::kCosine;
};

// "cosine", "linear", "constant".
absl::string_view DecayName(ScheduleConfig::Decay decay);

// Warmup steps for a run of `total_steps` (> 0): warmup_steps if >= 0, else
// round(warmup_ratio * total_steps) (nearest, halves up), at least 1 when the
// ratio is positive; clamped to total_steps either way.
int64_t WarmupSteps(const ScheduleConfig& config, int64_t total_steps);

// The rate for `step` (see the file comment). Needs total_steps > 0 and
// step >= 0 (CHECKed); a step past the end gets the last step's rate.
double LearningRate(const ScheduleConfig& config, int64_t step, int64_t total_steps);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_SCHEDULE_H_
