#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/str_join.h"
#include "base/units.h"
#include "client/commands.h"
#include "client/progress.h"
#include "model/synth.h"

namespace llamapro::cli {
namespace {

struct SynthFlags {
  std::string out, preset = "tiny", dtype = "bf16", shard_size = "5GB", arch;
  double scale = 1.0;
  int64_t layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, head_dim = 0,
          vocab = 0, max_positions = 0, sliding_window = -1;
  uint64_t seed = 0;
  bool tied = false, attention_bias = false, mlp_bias = false, force = false, quiet = false;
};

void RunSynth(const SynthFlags& flags) {
  auto preset = SynthPreset(flags.preset, flags.scale);
  ThrowIfError(preset.status());
  SynthSpec spec = *preset;
  if (flags.arch == "llama") spec.architecture = Architecture::kLlama;
  if (flags.arch == "mistral") spec.architecture = Architecture::kMistral;
  if (flags.layers > 0) spec.num_hidden_layers = flags.layers;
  if (flags.hidden > 0) spec.hidden_size = flags.hidden;
  if (flags.intermediate > 0) spec.intermediate_size = flags.intermediate;
  if (flags.heads > 0) spec.num_attention_heads = flags.heads;
  if (flags.kv_heads > 0) spec.num_key_value_heads = flags.kv_heads;
  if (flags.heads > 0 && flags.kv_heads == 0) spec.num_key_value_heads = flags.heads;
  if (flags.head_dim > 0) spec.head_dim = flags.head_dim;
  if (flags.vocab > 0) spec.vocab_size = flags.vocab;
  if (flags.max_positions > 0) spec.max_position_embeddings = flags.max_positions;
  if (flags.sliding_window >= 0) spec.sliding_window = flags.sliding_window;
  spec.tie_word_embeddings = spec.tie_word_embeddings || flags.tied;
  spec.attention_bias = flags.attention_bias;
  spec.mlp_bias = flags.mlp_bias;
  spec.seed = flags.seed;
  spec.dtype = flags.dtype == "f32"   ? DType::kF32
               : flags.dtype == "f16" ? DType::kF16
                                      : DType::kBF16;
  auto shard = ParseByteSize(flags.shard_size);
  ThrowIfError(shard.status());

  ProgressBar bar("synth", "tensors", !flags.quiet);
  absl::Status status = WriteSyntheticCheckpoint(
      spec, flags.out, *shard, flags.force, [&bar](const SynthProgress& p) {
        bar.Update(p.tensors_done, p.tensors_total, p.bytes_done, p.bytes_total, p.seconds);
      });
  bar.Finish();
  ThrowIfError(status);
  const LlamaConfig config = SynthConfig(spec);
  std::printf("wrote %s: %s, %lld blocks, hidden %lld, %s parameters, %s\n", flags.out.c_str(),
              std::string(config.ArchitectureName()).c_str(),
              static_cast<long long>(config.num_hidden_layers),
              static_cast<long long>(config.hidden_size),
              FormatCount(config.TotalParameters()).c_str(),
              std::string(TorchDTypeName(spec.dtype)).c_str());
}

}  // namespace

void AddSynthCommand(CLI::App& app) {
  auto flags = std::make_shared<SynthFlags>();
  CLI::App* cmd = app.add_subcommand(
      "synth",
      "Write a randomly initialised LLaMA/Mistral checkpoint (for demos, tests, benchmarks).");
  cmd->add_option("--out", flags->out, "Output directory")->required();
  cmd->add_option("--preset", flags->preset, "Shape to start from")
      ->check(CLI::IsMember(SynthPresetNames()))
      ->capture_default_str();
  cmd->add_option("--scale", flags->scale,
                  "Multiply hidden, FFN and vocabulary sizes of the preset (bytes ~ scale^2)")
      ->capture_default_str();
  cmd->add_option("--arch", flags->arch, "Architecture (default: the preset's)")
      ->check(CLI::IsMember({"llama", "mistral"}));
  cmd->add_option("--layers", flags->layers, "num_hidden_layers");
  cmd->add_option("--hidden", flags->hidden, "hidden_size");
  cmd->add_option("--intermediate", flags->intermediate, "intermediate_size");
  cmd->add_option("--heads", flags->heads, "num_attention_heads");
  cmd->add_option("--kv-heads", flags->kv_heads,
                  "num_key_value_heads (default: the preset's, or --heads when --heads is set)");
  cmd->add_option("--head-dim", flags->head_dim,
                  "head_dim, written to config.json (default: hidden / heads, not written)");
  cmd->add_option("--vocab", flags->vocab, "vocab_size");
  cmd->add_option("--max-positions", flags->max_positions, "max_position_embeddings");
  cmd->add_option("--sliding-window", flags->sliding_window, "Mistral sliding_window (0: none)");
  cmd->add_flag("--tied", flags->tied, "tie_word_embeddings (no separate lm_head)");
  cmd->add_flag("--attention-bias", flags->attention_bias, "Biases on q/k/v/o projections");
  cmd->add_flag("--mlp-bias", flags->mlp_bias, "Biases on gate/up/down projections");
  cmd->add_option("--dtype", flags->dtype, "Weight dtype")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  cmd->add_option("--seed", flags->seed, "Random seed")->capture_default_str();
  cmd->add_option("--shard-size", flags->shard_size, "Largest weights file before sharding")
      ->capture_default_str();
  cmd->add_flag("--force", flags->force, "Replace an existing output directory");
  cmd->add_flag("--quiet,-q", flags->quiet, "No progress output");
  cmd->callback([flags] { RunSynth(*flags); });
}

}  // namespace llamapro::cli
