#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/units.h"
#include "client/commands.h"
#include "train/config.h"
#include "train/trainer.h"

namespace llamapro::cli {
namespace {

struct TrainFlags {
  std::string config;
  bool resume = false;
  int64_t stop_after = 0;
  bool quiet = false;
};

std::string Duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

void RunTrain(const TrainFlags& flags) {
  auto config = LoadJobConfig(flags.config);
  ThrowIfError(config.status());
  TrainOptions options;
  options.resume = flags.resume;
  options.stop_after_steps = flags.stop_after;
  const bool tty = isatty(STDERR_FILENO) == 1;
  options.on_plan = [&](const TrainPlan& plan) {
    std::printf("model        %s\n", config->model.c_str());
    std::printf("trainable    %s: %s of %s parameters (%.2f%%)\n",
                absl::StrJoin(plan.trainable_blocks, ", ").c_str(),
                FormatCount(plan.trainable_parameters).c_str(),
                FormatCount(plan.total_parameters).c_str(),
                100.0 * plan.trainable_parameters / plan.total_parameters);
    std::printf("optimizer    %s, state %s; activations %s\n", config->optimizer.name.c_str(),
                FormatBytes(plan.optimizer_state_bytes).c_str(),
                FormatBytes(plan.activation_bytes).c_str());
    std::printf("FLOPs/token  %.3g forward + %.3g backward (as executed)\n",
                plan.flops_per_token.forward, plan.flops_per_token.backward);
    std::printf("batch        %lld sequences x %lld tokens per step (%lld micro-batches of %lld)\n",
                static_cast<long long>(config->batch.global_sequences),
                static_cast<long long>(config->data.seq_len),
                static_cast<long long>(config->batch.MicroBatchesPerStep()),
                static_cast<long long>(config->batch.micro_batch));
    std::printf("compute      %s\n", DescribeCompute(plan).c_str());
    std::printf("planned      %s\n", DescribePlan(plan.rank_plan).c_str());
    if (plan.resumed) {
      std::printf("resuming     from %s at step %lld of %lld\n", plan.resumed_from.c_str(),
                  static_cast<long long>(plan.start_step),
                  static_cast<long long>(plan.total_steps));
    } else {
      std::printf("steps        %lld\n", static_cast<long long>(plan.total_steps));
    }
    std::fflush(stdout);
  };
  options.on_step = [&](const TrainProgress& p) {
    if (flags.quiet) return;
    std::fprintf(stderr, "%sstep %lld/%lld loss %.4f lr %.3g grad_norm %.3f %.0f tok/s eta %s%s",
                 tty ? "\r" : "", static_cast<long long>(p.step),
                 static_cast<long long>(p.total_steps), p.loss, p.learning_rate, p.grad_norm,
                 p.tokens_per_second, Duration(p.eta_seconds).c_str(), tty ? "\x1b[K" : "\n");
    std::fflush(stderr);
  };
  options.on_eval = [&](const EvalReport& report) {
    if (tty && !flags.quiet) std::fprintf(stderr, "\n");
    for (const PerplexityResult& r : report.results) {
      std::printf("eval step %lld  %-16s perplexity %10.4f  (nll %.4f over %lld tokens)\n",
                  static_cast<long long>(report.step), r.corpus.c_str(), r.perplexity, r.nll,
                  static_cast<long long>(r.targets));
    }
    std::fflush(stdout);
  };
  options.on_checkpoint = [&](absl::string_view dir) {
    if (tty && !flags.quiet) std::fprintf(stderr, "\n");
    std::printf("checkpoint   %s\n", std::string(dir).c_str());
    std::fflush(stdout);
  };
  auto summary = RunTraining(*config, options);
  if (tty && !flags.quiet) std::fprintf(stderr, "\n");
  ThrowIfError(summary.status());
  std::printf("done         step %lld, loss %.4f, %.0f tokens/s; metrics in %s/metrics.jsonl\n",
              static_cast<long long>(summary->final_step), summary->final_loss,
              summary->tokens_per_second, config->output_dir.c_str());
}

}  // namespace

void AddTrainCommand(CLI::App& app) {
  auto flags = std::make_shared<TrainFlags>();
  CLI::App* cmd = app.add_subcommand(
      "train",
      "Train a model on token-store corpora as a job config says (docs/config.md): "
      "post-pretraining of the expanded blocks, or SFT.");
  cmd->add_option("--config", flags->config, "Job config (YAML)")->required();
  cmd->add_flag("--resume", flags->resume,
                "Continue the run in output_dir from its latest checkpoint");
  cmd->add_option("--stop-after", flags->stop_after,
                  "Write a checkpoint and stop after this many steps (0: run to the end)")
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", flags->quiet, "No progress line");
  cmd->callback([flags] { RunTrain(*flags); });
}

}  // namespace llamapro::cli
