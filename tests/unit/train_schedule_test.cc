#include <cmath>
#include <cstdint>
#include <numbers>

#include "gtest/gtest.h"
#include "train/schedule.h"

namespace llamapro {
namespace {

ScheduleConfig Config(double lr, double min_lr, ScheduleConfig::Decay decay, int64_t warmup_steps) {
  ScheduleConfig config;
  config.lr = lr;
  config.min_lr = min_lr;
  config.decay = decay;
  config.warmup_steps = warmup_steps;
  return config;
}

TEST(ScheduleTest, WarmupRisesLinearlyAndReachesPeakAtLastWarmupStep) {
  const ScheduleConfig config = Config(2e-4, 0, ScheduleConfig::Decay::kCosine, 4);
  EXPECT_DOUBLE_EQ(LearningRate(config, 0, 100), 0.5e-4);
  EXPECT_DOUBLE_EQ(LearningRate(config, 1, 100), 1.0e-4);
  EXPECT_DOUBLE_EQ(LearningRate(config, 2, 100), 1.5e-4);
  EXPECT_EQ(LearningRate(config, 3, 100), 2e-4);
  EXPECT_LT(LearningRate(config, 4, 100), 2e-4);
}

TEST(ScheduleTest, CosineDecaysFromPeakToMinLrExactlyAtLastStep) {
  const ScheduleConfig config = Config(1.0, 0.1, ScheduleConfig::Decay::kCosine, 0);
  EXPECT_EQ(LearningRate(config, 0, 11), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(config, 5, 11), 0.55);  // progress 0.5: halfway.
  EXPECT_DOUBLE_EQ(LearningRate(config, 2, 11),
                   0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 0.2)));
  EXPECT_EQ(LearningRate(config, 10, 11), 0.1);
}

TEST(ScheduleTest, CosineAfterWarmupStartsFromPeakAtLastWarmupStep) {
  // Warmup 10 of 110 steps: the decay runs over steps 9..109 (progress 0..1).
  const ScheduleConfig config = Config(1.0, 0, ScheduleConfig::Decay::kCosine, 10);
  EXPECT_EQ(LearningRate(config, 9, 110), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(config, 59, 110), 0.5);
  EXPECT_EQ(LearningRate(config, 109, 110), 0.0);
}

TEST(ScheduleTest, LinearDecayIsAStraightLineToMinLr) {
  const ScheduleConfig config = Config(1.0, 0.2, ScheduleConfig::Decay::kLinear, 1);
  // Warmup of one step is the peak itself; then 0.2 + 0.8 * (1 - s / 4).
  EXPECT_EQ(LearningRate(config, 0, 5), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(config, 1, 5), 0.8);
  EXPECT_DOUBLE_EQ(LearningRate(config, 2, 5), 0.6);
  EXPECT_DOUBLE_EQ(LearningRate(config, 3, 5), 0.4);
  EXPECT_DOUBLE_EQ(LearningRate(config, 4, 5), 0.2);
}

TEST(ScheduleTest, ConstantHoldsPeakAfterWarmupAndIgnoresMinLr) {
  const ScheduleConfig config = Config(3.0, 1.0, ScheduleConfig::Decay::kConstant, 3);
  EXPECT_DOUBLE_EQ(LearningRate(config, 0, 50), 1.0);
  for (int64_t step = 2; step < 50; ++step) EXPECT_EQ(LearningRate(config, step, 50), 3.0);
}

TEST(ScheduleTest, WarmupIncreasesStrictlyAndDecayNeverIncreases) {
  for (auto decay : {ScheduleConfig::Decay::kCosine, ScheduleConfig::Decay::kLinear,
                     ScheduleConfig::Decay::kConstant}) {
    for (int64_t total : {1, 2, 7, 100, 1000}) {
      ScheduleConfig config = Config(2e-4, 2e-5, decay, -1);
      config.warmup_ratio = 0.06;
      const int64_t warmup = WarmupSteps(config, total);
      double previous = 0;
      for (int64_t step = 0; step < total; ++step) {
        const double lr = LearningRate(config, step, total);
        EXPECT_GT(lr, 0);
        EXPECT_LE(lr, config.lr);
        if (step < warmup) {
          EXPECT_GT(lr, previous) << DecayName(decay) << " total " << total << " step " << step;
        } else if (step > 0) {
          EXPECT_LE(lr, previous) << DecayName(decay) << " total " << total << " step " << step;
        }
        previous = lr;
      }
    }
  }
}

TEST(ScheduleTest, WarmupRatioRoundsToNearestStepWithAtLeastOne) {
  ScheduleConfig config;
  config.lr = 1;
  config.warmup_ratio = 0.06;
  EXPECT_EQ(WarmupSteps(config, 1000), 60);
  EXPECT_EQ(WarmupSteps(config, 19074), 1144);  // 1144.44
  EXPECT_EQ(WarmupSteps(config, 25), 2);        // 1.5 rounds up.
  EXPECT_EQ(WarmupSteps(config, 10), 1);        // 0.6: at least one step.
  config.warmup_ratio = 0.07;
  EXPECT_EQ(WarmupSteps(config, 100), 7);  // 7.000000000000001 is 7, not 8.
  config.warmup_ratio = 0;
  EXPECT_EQ(WarmupSteps(config, 100), 0);
  config.warmup_ratio = 1;
  EXPECT_EQ(WarmupSteps(config, 100), 100);
}

TEST(ScheduleTest, WarmupStepsWinOverRatioAndAreClampedToTheRun) {
  ScheduleConfig config;
  config.lr = 1;
  config.warmup_ratio = 0.5;
  config.warmup_steps = 3;
  EXPECT_EQ(WarmupSteps(config, 100), 3);
  config.warmup_steps = 0;
  EXPECT_EQ(WarmupSteps(config, 100), 0);
  EXPECT_EQ(LearningRate(config, 0, 100), 1.0);
  config.warmup_steps = 500;
  EXPECT_EQ(WarmupSteps(config, 100), 100);
  EXPECT_DOUBLE_EQ(LearningRate(config, 49, 100), 0.5);
  EXPECT_EQ(LearningRate(config, 99, 100), 1.0);
}

TEST(ScheduleTest, SingleStepRunTrainsAtPeak) {
  for (auto decay : {ScheduleConfig::Decay::kCosine, ScheduleConfig::Decay::kLinear}) {
    EXPECT_EQ(LearningRate(Config(0.5, 0.1, decay, 0), 0, 1), 0.5);
    EXPECT_EQ(LearningRate(Config(0.5, 0.1, decay, 1), 0, 1), 0.5);
  }
}

TEST(ScheduleTest, StepsPastTheEndGetTheLastStepsRate) {
  const ScheduleConfig config = Config(1.0, 0.25, ScheduleConfig::Decay::kCosine, 2);
  EXPECT_EQ(LearningRate(config, 10, 10), 0.25);
  EXPECT_EQ(LearningRate(config, 1000, 10), 0.25);
}

}  // namespace
}  // namespace llamapro
