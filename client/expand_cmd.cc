#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "base/units.h"
#include "client/commands.h"
#include "client/progress.h"
#include "model/expand.h"

namespace llamapro::cli {
namespace {

struct ExpandFlags {
  std::string model, out, layout = "interleaved", dtype = "keep", shard_size = "5GB";
  int64_t add_blocks = 0, groups = 0;
  std::vector<int64_t> positions;
  bool verify = false, force = false, quiet = false;
};

void RunExpand(const ExpandFlags& flags) {
  ExpandOptions options;
  options.model_dir = flags.model;
  options.out_dir = flags.out;
  auto layout = ParseLayout(flags.layout);
  ThrowIfError(layout.status());
  options.spec.layout = *layout;
  options.spec.add_blocks = flags.add_blocks;
  options.spec.groups = flags.groups;
  options.spec.positions = flags.positions;
  if (flags.dtype == "f32") {
    options.dtype = DType::kF32;
  } else if (flags.dtype == "bf16") {
    options.dtype = DType::kBF16;
  } else if (flags.dtype == "f16") {
    options.dtype = DType::kF16;
  }
  auto shard = ParseByteSize(flags.shard_size);
  ThrowIfError(shard.status());
  options.shard_bytes = *shard;
  options.verify = flags.verify;
  options.force = flags.force;
  ProgressBar bar("expand", "tensors", !flags.quiet);
  options.progress = [&bar, &flags](const ExpandProgress& p) {
    if (p.phase == "verify") {
      bar.Finish();
      if (!flags.quiet) std::fprintf(stderr, "verify: running both models on probe sequences\n");
      return;
    }
    bar.Update(p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total, p.seconds);
  };
  auto result = ExpandCheckpoint(options);
  bar.Finish();
  ThrowIfError(result.status());

  const ExpansionPlan& plan = result->plan;
  std::printf("expanded %s -> %s\n", flags.model.c_str(), flags.out.c_str());
  std::printf("  blocks      %lld -> %lld (%s", static_cast<long long>(plan.source_layers),
              static_cast<long long>(plan.target_layers()),
              std::string(LayoutName(plan.layout)).c_str());
  if (plan.groups > 0) std::printf(", %lld groups", static_cast<long long>(plan.groups));
  std::printf(")\n  new blocks  %s (copies of %s, o_proj/down_proj zeroed)\n",
              absl::StrJoin(plan.new_blocks, ", ").c_str(),
              absl::StrJoin(plan.copied_from, ", ").c_str());
  std::printf("  weights     %s in %s (%lld tensors, %s)\n",
              FormatBytes(result->bytes_written).c_str(),
              absl::StrJoin(result->weight_files, ", ").c_str(),
              static_cast<long long>(result->tensors), absl::StrJoin(result->dtypes, ", ").c_str());
  if (!result->copied_files.empty()) {
    std::printf("  copied      %s\n", absl::StrJoin(result->copied_files, ", ").c_str());
  }
  if (!result->skipped_files.empty()) {
    std::printf("  not copied  %s (weights in another format would be stale)\n",
                absl::StrJoin(result->skipped_files, ", ").c_str());
  }
  const double rate = result->seconds > 0 ? result->bytes_written / result->seconds : 0;
  std::printf("  time        %.2f s (%s/s)\n", result->seconds,
              FormatBytes(static_cast<uint64_t>(rate)).c_str());
  if (result->verify) {
    std::printf(
        "  verify      logits bit-identical on %lld probe sequences x %lld tokens (%lld values)\n",
        static_cast<long long>(result->verify->sequences),
        static_cast<long long>(result->verify->seq_len),
        static_cast<long long>(result->verify->logits));
  }
}

}  // namespace

void AddExpandCommand(CLI::App& app) {
  auto flags = std::make_shared<ExpandFlags>();
  CLI::App* cmd = app.add_subcommand(
      "expand",
      "Insert identity copies of blocks (LLaMA Pro block expansion); the output computes the "
      "same function and loads in transformers as is.");
  cmd->add_option("--model", flags->model, "Input checkpoint directory (Hugging Face layout)")
      ->required();
  cmd->add_option("--out", flags->out, "Output directory (must not exist unless --force)")
      ->required();
  cmd->add_option("--add-blocks", flags->add_blocks,
                  "Number of blocks to add (N). Interleaved: one per group unless --groups is "
                  "given");
  cmd->add_option("--groups", flags->groups,
                  "Interleaved layout: split the blocks into P groups (must divide the block "
                  "count); defaults to --add-blocks");
  cmd->add_option("--layout", flags->layout, "Where new blocks go")
      ->check(CLI::IsMember({"interleaved", "top", "bottom", "positions"}))
      ->capture_default_str();
  cmd->add_option("--positions", flags->positions,
                  "With --layout positions: source blocks to copy, each copy inserted right after "
                  "its source (comma-separated, repeats allowed)")
      ->delimiter(',');
  cmd->add_option("--dtype", flags->dtype, "Output dtype of float tensors")
      ->check(CLI::IsMember({"keep", "f32", "bf16", "f16"}))
      ->capture_default_str();
  cmd->add_option("--shard-size", flags->shard_size,
                  "Largest weights file before sharding (e.g. 5GB, 500MB, 2GiB)")
      ->capture_default_str();
  cmd->add_flag("--verify", flags->verify,
                "Run original and expanded model on probe sequences; fail (writing nothing) "
                "unless the logits are bit-identical");
  cmd->add_flag("--force", flags->force, "Replace an existing output directory");
  cmd->add_flag("--quiet,-q", flags->quiet, "No progress output");
  cmd->callback([flags] { RunExpand(*flags); });
}

}  // namespace llamapro::cli
