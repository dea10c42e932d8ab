#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"
#include "train/config.h"

namespace llamapro {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A minimal valid config, as top-level key -> YAML value, in order.
using Parts = std::vector<std::pair<std::string, std::string>>;
Parts MinimalParts() {
  return {
      {"model", "models/tiny-pro"},
      {"output_dir", "runs/tiny"},
      {"data", "{store: store, mixture: code, seq_len: 16}"},
      {"optimizer", "{lr: 1.0e-3}"},
      {"batch", "{sequences: 4, micro_batch: 2}"},
      {"steps", "10"},
  };
}

// MinimalParts with `changes` applied: a key's value replaced (an empty value
// removes the key) or, for a key not there yet, appended.
std::string Yaml(const Parts& changes = {}) {
  Parts parts = MinimalParts();
  for (const auto& change : changes) {
    auto it = std::find_if(parts.begin(), parts.end(),
                           [&](const auto& part) { return part.first == change.first; });
    if (it == parts.end()) {
      parts.push_back(change);
    } else {
      it->second = change.second;
    }
  }
  std::string yaml;
  for (const auto& [key, value] : parts) {
    if (!value.empty()) absl::StrAppend(&yaml, key, ": ", value, "\n");
  }
  return yaml;
}

JobConfig ParseOk(const std::string& yaml) {
  auto config = ParseJobConfig(yaml, "job.yaml");
  EXPECT_TRUE(config.ok()) << config.status() << "\n" << yaml;
  return config.ok() ? *std::move(config) : JobConfig();
}

std::string ErrorOf(const std::string& yaml) {
  auto config = ParseJobConfig(yaml, "job.yaml");
  if (config.ok()) return "ok";
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(config.status().message());
}

TEST(JobConfigTest, ShippedPaperPretrainExampleParsesToThePaperSettings) {
  const std::string path = std::string(LLAMAPRO_EXAMPLES_DIR) + "/llama-pro-pretrain.yaml";
  auto config = LoadJobConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->source, path);
  EXPECT_EQ(config->trainable.mode, TrainableConfig::Mode::kExpanded);
  EXPECT_TRUE(config->trainable.explicit_);
  EXPECT_EQ(config->optimizer.name, "adamw");
  EXPECT_EQ(config->optimizer.lr, 2e-4);
  EXPECT_EQ(config->optimizer.beta1, 0.9);
  EXPECT_EQ(config->optimizer.beta2, 0.95);
  EXPECT_EQ(config->optimizer.weight_decay, 0.1);
  EXPECT_EQ(config->optimizer.clip_grad_norm, 1.0);
  EXPECT_EQ(config->schedule.lr, 2e-4);
  EXPECT_EQ(config->schedule.warmup_ratio, 0.06);
  EXPECT_EQ(config->schedule.decay, ScheduleConfig::Decay::kCosine);
  EXPECT_EQ(config->data.seq_len, 4096);
  EXPECT_EQ(config->batch.global_tokens, 1024 * 4096);
  EXPECT_EQ(config->batch.global_sequences, 1024);
  EXPECT_EQ(config->tokens, 80'000'000'000);
  EXPECT_EQ(config->steps, 19074);
  EXPECT_EQ(config->precision, Precision::kFp32);
  EXPECT_EQ(config->device, "cpu");
}

TEST(JobConfigTest, ShippedPaperSftExampleParsesToThePaperSettings) {
  auto config = LoadJobConfig(std::string(LLAMAPRO_EXAMPLES_DIR) + "/llama-pro-sft.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->trainable.mode, TrainableConfig::Mode::kAll);
  EXPECT_TRUE(config->trainable.embeddings && config->trainable.norm && config->trainable.lm_head);
  EXPECT_EQ(config->optimizer.lr, 2e-5);
  EXPECT_EQ(config->schedule.warmup_ratio, 0.03);
  EXPECT_EQ(config->batch.global_sequences, 128);
  EXPECT_EQ(config->data.mixture.size(), 1u);
}

TEST(JobConfigTest, ShippedTinyCpuExampleParsesWithPathsUnderTheRepository) {
  auto config = LoadJobConfig(std::string(LLAMAPRO_EXAMPLES_DIR) + "/tiny-cpu.yaml");
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string root =
      std::string(LLAMAPRO_EXAMPLES_DIR).substr(0, std::string(LLAMAPRO_EXAMPLES_DIR).rfind('/'));
  EXPECT_EQ(config->model, root + "/out/tiny-cpu/tiny-llama-pro");
  EXPECT_EQ(config->data.store, root + "/out/tiny-cpu/store");
  EXPECT_EQ(config->steps, 300);
  EXPECT_EQ(config->batch.MicroBatchesPerStep(), 2);
}

TEST(JobConfigTest, MinimalConfigGetsTheDocumentedDefaults) {
  const JobConfig config = ParseOk(Yaml());
  EXPECT_EQ(config.source, "job.yaml");
  EXPECT_EQ(config.model, "models/tiny-pro");  // No base directory: as written.
  EXPECT_EQ(config.data.seed, 0u);
  EXPECT_FALSE(config.trainable.explicit_);
  EXPECT_EQ(config.trainable.mode, TrainableConfig::Mode::kExpanded);
  EXPECT_EQ(config.optimizer.name, "adamw");
  EXPECT_EQ(config.optimizer.beta1, 0.9);
  EXPECT_EQ(config.optimizer.beta2, 0.95);
  EXPECT_EQ(config.optimizer.eps, 1e-8);
  EXPECT_EQ(config.optimizer.weight_decay, 0.1);
  EXPECT_EQ(config.optimizer.clip_grad_norm, 1.0);
  EXPECT_EQ(config.optimizer.momentum, 0.0);
  EXPECT_EQ(config.schedule.lr, 1e-3);
  EXPECT_EQ(config.schedule.min_lr, 0.0);
  EXPECT_EQ(config.schedule.warmup_ratio, 0.0);
  EXPECT_EQ(config.schedule.warmup_steps, -1);
  EXPECT_EQ(config.schedule.decay, ScheduleConfig::Decay::kCosine);
  EXPECT_EQ(config.batch.micro_batch, 2);
  EXPECT_EQ(config.batch.global_tokens, 64);
  EXPECT_EQ(config.batch.MicroBatchesPerStep(), 2);
  EXPECT_EQ(config.steps, 10);
  EXPECT_EQ(config.tokens, 0);
  EXPECT_FALSE(config.eval.enabled());
  EXPECT_EQ(config.checkpoint.interval, 0);
  EXPECT_EQ(config.checkpoint.keep, 3);
  EXPECT_EQ(config.precision, Precision::kFp32);
  EXPECT_EQ(config.device, "cpu");
  EXPECT_EQ(config.threads, 0);
  EXPECT_EQ(config.log_interval, 1);
  // SGD has no weight decay unless asked for.
  EXPECT_EQ(ParseOk(Yaml({{"optimizer", "{name: sgd, lr: 0.1}"}})).optimizer.weight_decay, 0.0);
}

TEST(JobConfigTest, RelativePathsResolveAgainstTheConfigFilesDirectory) {
  testing::ScratchDir dir;
  testing::WriteBytes(dir.Join("job.yaml"),
                      Yaml({{"model", "../models/./pro"}, {"output_dir", "/abs/runs/x/"}}));
  auto config = LoadJobConfig(dir.Join("job.yaml"));
  ASSERT_TRUE(config.ok()) << config.status();
  const std::string parent = dir.path().substr(0, dir.path().rfind('/'));
  EXPECT_EQ(config->model, parent + "/models/pro");
  EXPECT_EQ(config->output_dir, "/abs/runs/x");  // Absolute: kept (normalised).
  EXPECT_EQ(config->data.store, dir.Join("store"));

  auto parsed = ParseJobConfig(Yaml(), "inline", "/etc/jobs");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->model, "/etc/jobs/models/tiny-pro");
}

TEST(JobConfigTest, TokensResolveToStepsRoundingUp) {
  const std::string batch = "{tokens: 64, micro_batch: 2}";  // 4 sequences of 16.
  JobConfig exact = ParseOk(Yaml({{"batch", batch}, {"steps", ""}, {"tokens", "640"}}));
  EXPECT_EQ(exact.steps, 10);
  EXPECT_EQ(exact.tokens, 640);
  EXPECT_EQ(exact.batch.global_sequences, 4);
  JobConfig partial = ParseOk(Yaml({{"batch", batch}, {"steps", ""}, {"tokens", "641"}}));
  EXPECT_EQ(partial.steps, 11);
  JobConfig big = ParseOk(Yaml({{"steps", ""}, {"tokens", "8.0e10"}}));
  EXPECT_EQ(big.steps, 1'250'000'000);
  JobConfig underscores = ParseOk(Yaml({{"steps", ""}, {"tokens", "1_000"}}));
  EXPECT_EQ(underscores.steps, 16);  // ceil(1000 / 64).
}

TEST(JobConfigTest, MixtureMayBeAMapAListOrAString) {
  for (const char* mixture :
       {"{code: 0.7, math: 0.3}", "\"code:0.7, math:0.3\"", "[code:0.7, math:0.3]"}) {
    const JobConfig config =
        ParseOk(Yaml({{"data", absl::StrCat("{store: s, seq_len: 16, mixture: ", mixture, "}")}}));
    ASSERT_EQ(config.data.mixture.size(), 2u) << mixture;
    EXPECT_EQ(config.data.mixture[0].corpus, "code");
    EXPECT_EQ(config.data.mixture[0].weight, 0.7);
    EXPECT_EQ(config.data.mixture[1].corpus, "math");
    EXPECT_EQ(config.data.mixture[1].weight, 0.3);
  }
  const JobConfig names = ParseOk(Yaml({{"data", "{store: s, seq_len: 16, mixture: [a, b]}"}}));
  ASSERT_EQ(names.data.mixture.size(), 2u);
  EXPECT_EQ(names.data.mixture[1].weight, 1.0);
}

TEST(JobConfigTest, TrainableTakesModesOrAnExplicitLayerList) {
  EXPECT_EQ(ParseOk(Yaml({{"trainable", "all"}})).trainable.mode, TrainableConfig::Mode::kAll);
  const TrainableConfig layers =
      ParseOk(Yaml({{"trainable", "{layers: [7, 3], lm_head: true}"}})).trainable;
  EXPECT_EQ(layers.mode, TrainableConfig::Mode::kLayers);
  EXPECT_TRUE(layers.explicit_);
  EXPECT_THAT(layers.layers, ElementsAre(3, 7));
  EXPECT_FALSE(layers.embeddings);
  EXPECT_FALSE(layers.norm);
  EXPECT_TRUE(layers.lm_head);
}

TEST(JobConfigTest, ScheduleAcceptsWarmupAsRatioPercentOrSteps) {
  EXPECT_EQ(ParseOk(Yaml({{"schedule", "{warmup: 0.06}"}})).schedule.warmup_ratio, 0.06);
  EXPECT_EQ(ParseOk(Yaml({{"schedule", "{warmup: 6%}"}})).schedule.warmup_ratio, 0.06);
  const ScheduleConfig steps =
      ParseOk(Yaml({{"schedule", "{warmup_steps: 3, decay: linear, min_lr: 1.0e-4}"}})).schedule;
  EXPECT_EQ(steps.warmup_steps, 3);
  EXPECT_EQ(steps.decay, ScheduleConfig::Decay::kLinear);
  EXPECT_EQ(steps.min_lr, 1e-4);
}

TEST(JobConfigTest, EvalTakesCorporaIntervalAndWindows) {
  const EvalConfig eval =
      ParseOk(Yaml({{"eval", "{corpora: [web, code], interval: 5, windows: 2}"}})).eval;
  EXPECT_TRUE(eval.enabled());
  EXPECT_THAT(eval.corpora, ElementsAre("web", "code"));
  EXPECT_EQ(eval.interval, 5);
  EXPECT_EQ(eval.windows, 2);
}

struct ErrorCase {
  Parts changes;
  std::string expected;  // A substring of the message, starting with the key path.
};

TEST(JobConfigTest, EachBadValueIsReportedWithItsKeyPath) {
  const std::vector<ErrorCase> cases = {
      // Missing required keys.
      {{{"model", ""}}, "job.yaml: model: is required"},
      {{{"output_dir", ""}}, "job.yaml: output_dir: is required"},
      {{{"data", ""}}, "job.yaml: data: is required"},
      {{{"data", "{store: s, seq_len: 16}"}}, "job.yaml: data.mixture: is required"},
      {{{"data", "{store: s, mixture: code}"}}, "job.yaml: data.seq_len: is required"},
      {{{"optimizer", ""}}, "job.yaml: optimizer: is required"},
      {{{"optimizer", "{name: adamw}"}}, "job.yaml: optimizer.lr: is required"},
      {{{"batch", ""}}, "job.yaml: batch: is required"},
      {{{"batch", "{micro_batch: 2}"}}, "job.yaml: batch: needs the global batch"},
      {{{"steps", ""}}, "job.yaml: steps: is required (or tokens"},
      {{{"eval", "{interval: 5}"}}, "job.yaml: eval.corpora: is required"},
      {{{"trainable", "{lm_head: true}"}}, "job.yaml: trainable.layers: is required"},
      // Wrong types and ranges.
      {{{"optimizer", "{lr: fast}"}},
       "job.yaml: optimizer.lr: must be a positive number, got \"fast\""},
      {{{"optimizer", "{lr: -1}"}}, "job.yaml: optimizer.lr: must be a positive number, got -1"},
      {{{"optimizer", "{lr: 1.0e-3, name: adam}"}},
       "job.yaml: optimizer.name: must be one of adamw, sgd, got \"adam\""},
      {{{"optimizer", "{lr: 1.0e-3, betas: [0.9]}"}},
       "job.yaml: optimizer.betas: must be a list of two numbers in [0, 1)"},
      {{{"optimizer", "{lr: 1.0e-3, betas: [0.9, 1.0]}"}},
       "job.yaml: optimizer.betas[1]: must be a number in [0, 1), got 1.0"},
      {{{"optimizer", "{lr: 1.0e-3, eps: 0}"}}, "job.yaml: optimizer.eps: must be a positive"},
      {{{"optimizer", "{lr: 1.0e-3, weight_decay: -0.1}"}},
       "job.yaml: optimizer.weight_decay: must be a non-negative number"},
      {{{"optimizer", "{lr: 1.0e-3, clip_grad_norm: [1]}"}},
       "job.yaml: optimizer.clip_grad_norm: must be a non-negative number (0 = no clipping), got "
       "a list of 1"},
      {{{"optimizer", "[1]"}}, "job.yaml: optimizer: must be a map with keys name, lr"},
      {{{"data", "{store: s, mixture: code, seq_len: 0}"}},
       "job.yaml: data.seq_len: must be a positive integer, got 0"},
      {{{"data", "{store: s, mixture: code, seq_len: 16.5}"}},
       "job.yaml: data.seq_len: must be a positive integer, got 16.5"},
      {{{"data", "{store: s, mixture: code, seq_len: 16, seed: -1}"}},
       "job.yaml: data.seed: must be a non-negative integer"},
      {{{"data", "{store: s, mixture: {code: 0}, seq_len: 16}"}},
       "job.yaml: data.mixture.code: must be a positive weight, got 0"},
      {{{"data", "{store: s, mixture: {code: }, seq_len: 16}"}},
       "job.yaml: data.mixture.code: needs a weight"},
      {{{"data", "{store: s, mixture: [a, a], seq_len: 16}"}},
       "job.yaml: data.mixture[1]: corpus 'a' appears twice"},
      {{{"data", "{store: s, mixture: \"a:x\", seq_len: 16}"}},
       "job.yaml: data.mixture: mixture entry 'a:x': the weight must be a positive number"},
      {{{"data", "{store: [s], mixture: a, seq_len: 16}"}},
       "job.yaml: data.store: must be a non-empty string, got a list of 1"},
      {{{"trainable", "frozen"}},
       "job.yaml: trainable: must be expanded, all, lora, moe, or a map {layers: [...], "
       "embeddings, "
       "norm, "
       "lm_head}, got \"frozen\""},
      {{{"trainable", "{layers: [3, -1]}"}},
       "job.yaml: trainable.layers[1]: must be a block index (>= 0), got -1"},
      {{{"trainable", "{layers: [3, 3]}"}},
       "job.yaml: trainable.layers[1]: block 3 is listed twice"},
      {{{"trainable", "{layers: [3], norm: maybe}"}},
       "job.yaml: trainable.norm: must be true or false, got \"maybe\""},
      {{{"trainable", "{layers: []}"}}, "job.yaml: trainable: nothing would train"},
      {{{"schedule", "{warmup: 1.5}"}}, "job.yaml: schedule.warmup: must be a fraction"},
      {{{"schedule", "{warmup_steps: 2.5}"}},
       "job.yaml: schedule.warmup_steps: must be a non-negative integer, got 2.5"},
      {{{"schedule", "{decay: step}"}},
       "job.yaml: schedule.decay: must be one of cosine, linear, constant, got \"step\""},
      {{{"batch", "{sequences: 0}"}}, "job.yaml: batch.sequences: must be a positive integer"},
      {{{"batch", "{sequences: 4, micro_batch: 0}"}},
       "job.yaml: batch.micro_batch: must be a positive"},
      {{{"steps", "0"}}, "job.yaml: steps: must be a positive integer, got 0"},
      {{{"steps", "many"}}, "job.yaml: steps: must be a positive integer, got \"many\""},
      {{{"eval", "{corpora: [web, web]}"}}, "job.yaml: eval.corpora: 'web' appears twice"},
      {{{"eval", "{corpora: [], interval: 5}"}},
       "job.yaml: eval.corpora: must be a non-empty list"},
      {{{"eval", "{corpora: web, interval: 0}"}}, "job.yaml: eval.interval: must be a positive"},
      {{{"checkpoint", "{keep: 0}"}}, "job.yaml: checkpoint.keep: must be a positive integer"},
      {{{"checkpoint", "{interval: -5}"}}, "job.yaml: checkpoint.interval: must be a non-negative"},
      {{{"precision", "fp16"}}, "job.yaml: precision: must be one of fp32, bf16, got \"fp16\""},
      {{{"device", "gpu"}}, "job.yaml: device: must be cpu, cuda or cuda:N, got \"gpu\""},
      {{{"device", "cuda:-1"}}, "job.yaml: device: must be cpu, cuda or cuda:N"},
      {{{"recompute", "some"}},
       "job.yaml: recompute: must be one of none, attention, full, got \"some\""},
      {{{"threads", "-1"}}, "job.yaml: threads: must be a non-negative integer"},
      {{{"log_interval", "0"}}, "job.yaml: log_interval: must be a positive integer"},
      // Inconsistent combinations.
      {{{"tokens", "640"}}, "job.yaml: steps: give steps or tokens, not both"},
      {{{"batch", "{tokens: 64, sequences: 4}"}},
       "job.yaml: batch.tokens: give batch.tokens or batch.sequences, not both"},
      {{{"batch", "{tokens: 96, micro_batch: 4}"}},
       "job.yaml: batch.tokens: 96 is not a multiple of micro_batch x seq_len = 4 x 16 = 64"},
      {{{"batch", "{sequences: 2, micro_batch: 4}"}},
       "job.yaml: batch.micro_batch: 4 exceeds batch.sequences 2"},
      {{{"batch", "{sequences: 6, micro_batch: 4}"}},
       "job.yaml: batch.sequences: 6 is not a multiple of batch.micro_batch 4"},
      {{{"schedule", "{warmup: 0.1, warmup_steps: 3}"}},
       "job.yaml: schedule.warmup: give schedule.warmup or schedule.warmup_steps, not both"},
      {{{"schedule", "{warmup_steps: 11}"}},
       "job.yaml: schedule.warmup_steps: 11 exceeds the run's 10 steps"},
      {{{"schedule", "{min_lr: 0.01}"}}, "job.yaml: schedule.min_lr: 0.01 exceeds optimizer.lr"},
      {{{"schedule", "{decay: constant, min_lr: 0}"}},
       "job.yaml: schedule.min_lr: has no effect with schedule.decay: constant"},
      {{{"optimizer", "{name: sgd, lr: 0.1, betas: [0.9, 0.9]}"}},
       "job.yaml: optimizer.betas: is an adamw setting; optimizer.name is sgd"},
      {{{"optimizer", "{lr: 0.1, momentum: 0.9}"}},
       "job.yaml: optimizer.momentum: is an sgd setting; optimizer.name is adamw"},
      {{{"precision", "bf16"}},
       "job.yaml: precision: bf16 is the CUDA backend's; on device cpu use fp32"},
      {{{"device", "cuda:0"}, {"precision", "fp32"}},
       "job.yaml: precision: the CUDA backend trains in bf16 mixed precision"},
      {{{"recompute", "full"}}, "job.yaml: recompute: full is the CUDA backend's"},
      // Structure.
      {{{"data", "{store: s, store: t, mixture: a, seq_len: 16}"}},
       "job.yaml: data.store: duplicate key"},
  };
  for (const ErrorCase& c : cases) {
    const std::string yaml = Yaml(c.changes);
    EXPECT_THAT(ErrorOf(yaml), HasSubstr(c.expected)) << yaml;
  }
}

TEST(JobConfigTest, DeviceDecidesPrecisionAndRecompute) {
  // CUDA: bf16 mixed precision unless told otherwise, and recomputation.
  absl::StatusOr<JobConfig> cuda =
      ParseJobConfig(Yaml({{"device", "CUDA:1"}, {"recompute", "attention"}}), "job.yaml");
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_EQ(cuda->device, "cuda:1");
  EXPECT_EQ(cuda->precision, Precision::kBf16);
  EXPECT_FALSE(cuda->precision_given);
  EXPECT_EQ(cuda->recompute, "attention");
  absl::StatusOr<JobConfig> bare = ParseJobConfig(Yaml({{"device", "cuda"}}), "job.yaml");
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ(bare->device, "cuda:0");
  EXPECT_EQ(bare->recompute, "none");

  // A worker's --device moves the job: the precision follows when the config
  // left it out, and what the new device cannot run is refused.
  JobConfig moved = *cuda;
  moved.recompute = "none";
  ASSERT_TRUE(SetDevice(&moved, "cpu").ok());
  EXPECT_EQ(moved.device, "cpu");
  EXPECT_EQ(moved.precision, Precision::kFp32);
  EXPECT_THAT(SetDevice(&*cuda, "cpu").message(),
              HasSubstr("job.yaml: recompute: attention is the CUDA backend's"));
  absl::StatusOr<JobConfig> fp32 = ParseJobConfig(Yaml({{"precision", "fp32"}}), "job.yaml");
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_THAT(SetDevice(&*fp32, "cuda:0").message(),
              HasSubstr("precision: the CUDA backend trains in bf16"));
  EXPECT_THAT(SetDevice(&*fp32, "tpu").message(),
              HasSubstr("job.yaml: device: must be cpu, cuda or cuda:N, got \"tpu\""));

  EXPECT_EQ(*DeviceOrdinal("cpu"), -1);
  EXPECT_EQ(*DeviceOrdinal("cuda:12"), 12);
  EXPECT_FALSE(DeviceOrdinal("cuda:").ok());
  EXPECT_FALSE(DeviceOrdinal("cuda:+1").ok());
}

TEST(JobConfigTest, UnknownKeysAreErrorsThatSuggestTheIntendedKey) {
  EXPECT_EQ(ErrorOf(Yaml({{"optimizer", "{learning_rate: 1.0e-3}"}})),
            "job.yaml: optimizer.learning_rate: unknown key (did you mean lr?)");
  EXPECT_EQ(ErrorOf(Yaml({{"schedule", "{warmpu: 0.06}"}})),
            "job.yaml: schedule.warmpu: unknown key (did you mean warmup?)");
  EXPECT_EQ(ErrorOf(Yaml({{"lr", "1.0e-3"}})),
            "job.yaml: lr: unknown key (did you mean optimizer.lr?)");
  EXPECT_EQ(ErrorOf(Yaml({{"eps", "1.0e-8"}})),  // Not "steps", two edits away.
            "job.yaml: eps: unknown key (did you mean optimizer.eps?)");
  EXPECT_EQ(ErrorOf(Yaml({{"interval", "5"}})),
            "job.yaml: interval: unknown key (did you mean eval.interval or checkpoint.interval?)");
  EXPECT_EQ(ErrorOf(Yaml({{"optimizer", "{LR: 1.0e-3}"}})),
            "job.yaml: optimizer.LR: unknown key (did you mean lr?)");
  EXPECT_EQ(ErrorOf(Yaml({{"eval_interval", "5"}})),
            "job.yaml: eval_interval: unknown key (did you mean eval.interval?)");
  EXPECT_EQ(ErrorOf(Yaml({{"optimizer", "{lr: 1.0e-3, warmup: 0.1}"}})),
            "job.yaml: optimizer.warmup: unknown key (did you mean schedule.warmup?)");
  EXPECT_EQ(ErrorOf(Yaml({{"data", "{store: s, mixture: a, seq_len: 16, seqlen: 8}"}})),
            "job.yaml: data.seqlen: unknown key (did you mean seq_len?)");
  EXPECT_EQ(
      ErrorOf(Yaml({{"wandb", "{project: x}"}})),
      "job.yaml: wandb: unknown key; the top level takes model, output_dir, data, "
      "trainable, lora, optimizer, schedule, batch, steps, tokens, eval, checkpoint, parallel, "
      "precision, "
      "device, recompute, threads, log_interval");
}

TEST(JobConfigTest, MalformedYamlIsReportedWithLineAndColumn) {
  EXPECT_THAT(ErrorOf("model: a\ndata: {store: s\n"), HasSubstr("job.yaml:"));
  EXPECT_THAT(ErrorOf("model: a\ndata: {store: s\n"), HasSubstr("invalid YAML"));
  EXPECT_EQ(ErrorOf(""), "job.yaml: empty config");
  EXPECT_THAT(ErrorOf("- a\n- b\n"), HasSubstr("job.yaml: (top level): must be a map"));
}

TEST(JobConfigTest, LoadJobConfigNamesAMissingFile) {
  auto config = LoadJobConfig("/nonexistent/job.yaml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/job.yaml"));
}

TEST(JobConfigTest, GeneralCorporaDefaultToThoseTheMixtureDoesNotWeightMost) {
  // The forgetting alarm watches the general corpora: by default every
  // evaluated corpus but the one the mixture weights most (the domain).
  JobConfig config =
      ParseOk(Yaml({{"data", "{store: s, mixture: {code: 0.7, web: 0.3}, seq_len: 16}"},
                    {"eval", "{corpora: [web, code, wiki]}"}}));
  EXPECT_THAT(config.eval.general, ElementsAre("web", "wiki"));
  // Explicit.
  config = ParseOk(Yaml({{"eval", "{corpora: [web, code], general: [code]}"}}));
  EXPECT_THAT(config.eval.general, ElementsAre("code"));
  // Only the domain evaluated: nothing general.
  config = ParseOk(Yaml({{"eval", "{corpora: code}"}}));
  EXPECT_TRUE(config.eval.general.empty());
  EXPECT_THAT(ErrorOf(Yaml({{"eval", "{corpora: [web, code], general: [wiki]}"}})),
              HasSubstr("eval.general: \"wiki\" is not one of eval.corpora (web, code)"));
}

TEST(JobConfigTest, LoraTakesRankAlphaTargetsBlocksAndExport) {
  EXPECT_EQ(ParseOk(Yaml({{"trainable", "moe"}})).trainable.mode, TrainableConfig::Mode::kMoe);
  JobConfig config = ParseOk(Yaml({{"trainable", "lora"}}));
  EXPECT_EQ(config.trainable.mode, TrainableConfig::Mode::kLora);
  EXPECT_EQ(config.lora.rank, 8);
  EXPECT_EQ(config.lora.alpha, 16);
  EXPECT_THAT(config.lora.targets, ElementsAre("q_proj", "v_proj"));
  EXPECT_FALSE(config.lora.new_blocks_only);
  EXPECT_TRUE(config.lora.merge);
  config = ParseOk(Yaml({{"trainable", "lora"},
                         {"lora",
                          "{rank: 4, alpha: 8, targets: [q_proj, down_proj], blocks: new, "
                          "export: adapter}"}}));
  EXPECT_EQ(config.lora.rank, 4);
  EXPECT_THAT(config.lora.targets, ElementsAre("q_proj", "down_proj"));
  EXPECT_TRUE(config.lora.new_blocks_only);
  EXPECT_FALSE(config.lora.merge);
  EXPECT_THAT(ErrorOf(Yaml({{"lora", "{rank: 4}"}})),
              HasSubstr("lora: applies only with 'trainable: lora'"));
  EXPECT_THAT(ErrorOf(Yaml({{"trainable", "lora"}, {"lora", "{targets: [lm_head]}"}})),
              HasSubstr("lora.targets: unknown target 'lm_head'"));
  EXPECT_THAT(ErrorOf(Yaml({{"trainable", "lora"}, {"lora", "{rank: 0}"}})),
              HasSubstr("lora.rank"));
  EXPECT_THAT(ErrorOf(Yaml({{"trainable", "lora"}, {"lora", "{dropout: 0.1}"}})),
              HasSubstr("lora.dropout: only 0 is supported"));
  EXPECT_THAT(ErrorOf(Yaml({{"trainable", "lora"}, {"lora", "{export: peft}"}})),
              HasSubstr("lora.export"));
}

}  // namespace
}  // namespace llamapro
