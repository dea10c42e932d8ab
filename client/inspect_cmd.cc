#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/units.h"
#include "client/commands.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "model/lineage.h"
#include "model/weights.h"
#include "nlohmann/json.hpp"

namespace llamapro::cli {
namespace {

struct InspectFlags {
  std::string model;
  bool json = false;
};

std::string RopeDescription(const LlamaConfig& c) {
  switch (c.rope_scaling.type) {
    case RopeScalingType::kNone:
      return "none";
    case RopeScalingType::kLinear:
      return absl::StrFormat("linear x%g", c.rope_scaling.factor);
    case RopeScalingType::kLlama3:
      return absl::StrFormat("llama3 x%g (low %g, high %g, original %d)", c.rope_scaling.factor,
                             c.rope_scaling.low_freq_factor, c.rope_scaling.high_freq_factor,
                             c.rope_scaling.original_max_position_embeddings);
  }
  return "?";
}

void RunInspect(const InspectFlags& flags) {
  auto config = LoadLlamaConfig(flags.model);
  ThrowIfError(config.status());
  auto reader = CheckpointReader::Open(flags.model);
  ThrowIfError(reader.status());
  ThrowIfError(ValidateCheckpoint(*config, **reader));
  auto record = LoadExpansionRecord(flags.model, config->num_hidden_layers);
  ThrowIfError(record.status());

  const int64_t layers = config->num_hidden_layers;
  std::vector<int64_t> block_params(layers, 0);
  int64_t embedding = 0, lm_head = 0, other = 0, total = 0;
  std::map<std::string, int64_t> dtype_tensors;
  for (const std::string& name : (*reader)->names()) {
    const TensorInfo& info = *(*reader)->Find(name)->info;
    const int64_t n = info.NumElements();
    total += n;
    ++dtype_tensors[std::string(DTypeName(info.dtype))];
    if (auto layer = ParseLayerTensorName(name)) {
      block_params[layer->first] += n;
    } else if (name == kEmbedTokens) {
      embedding += n;
    } else if (name == kLmHead) {
      lm_head += n;
    } else {
      other += n;
    }
  }
  std::vector<std::string> files;
  uint64_t bytes = 0;
  for (const auto& f : (*reader)->files()) {
    files.push_back(f->path().substr(f->path().find_last_of('/') + 1));
    bytes += f->mapped().size();
  }
  std::vector<int64_t> stage(layers, 0);
  std::vector<int64_t> new_blocks;
  if (*record) {
    stage = (*record)->block_stage;
    new_blocks = (*record)->NewBlocks();
  }
  const int64_t latest = *record ? static_cast<int64_t>((*record)->lineage.size()) : 0;

  if (flags.json) {
    nlohmann::ordered_json out;
    out["model"] = flags.model;
    out["architecture"] = config->ArchitectureName();
    out["config"] = {{"vocab_size", config->vocab_size},
                     {"hidden_size", config->hidden_size},
                     {"intermediate_size", config->intermediate_size},
                     {"num_hidden_layers", layers},
                     {"num_attention_heads", config->num_attention_heads},
                     {"num_key_value_heads", config->num_key_value_heads},
                     {"head_dim", config->head_dim},
                     {"max_position_embeddings", config->max_position_embeddings},
                     {"rope_theta", config->rope_theta},
                     {"rope_scaling", RopeDescription(*config)},
                     {"rms_norm_eps", config->rms_norm_eps},
                     {"tie_word_embeddings", config->tie_word_embeddings},
                     {"attention_bias", config->attention_bias},
                     {"mlp_bias", config->mlp_bias},
                     {"sliding_window", config->sliding_window}};
    out["parameters"] = {{"total", total},
                         {"embedding", embedding},
                         {"lm_head", lm_head},
                         {"other", other},
                         {"blocks", block_params}};
    out["dtypes"] = dtype_tensors;
    out["files"] = files;
    out["bytes"] = bytes;
    if (*record) {
      nlohmann::ordered_json expansion;
      expansion["new_blocks"] = new_blocks;
      expansion["block_stage"] = stage;
      nlohmann::ordered_json lineage = nlohmann::ordered_json::array();
      for (const ExpansionStage& s : (*record)->lineage) {
        lineage.push_back({{"stage", s.stage},
                           {"layout", s.layout},
                           {"source_num_hidden_layers", s.source_layers},
                           {"num_hidden_layers", s.target_layers},
                           {"groups", s.groups},
                           {"new_blocks", s.new_blocks},
                           {"copied_from", s.copied_from},
                           {"source_model", s.source_model},
                           {"created_at", s.created_at}});
      }
      expansion["lineage"] = lineage;
      out["expansion"] = expansion;
    } else {
      out["expansion"] = nullptr;
    }
    std::printf("%s\n", out.dump(2).c_str());
    return;
  }

  std::vector<std::string> dtypes;
  dtypes.reserve(dtype_tensors.size());
  for (const auto& [name, count] : dtype_tensors) dtypes.push_back(absl::StrCat(name, " x", count));
  std::printf("model        %s\n", flags.model.c_str());
  std::printf(
      "architecture %s: hidden %lld, FFN %lld, heads %lld (kv %lld, dim %lld), vocab %lld\n",
      std::string(config->ArchitectureName()).c_str(), static_cast<long long>(config->hidden_size),
      static_cast<long long>(config->intermediate_size),
      static_cast<long long>(config->num_attention_heads),
      static_cast<long long>(config->num_key_value_heads), static_cast<long long>(config->head_dim),
      static_cast<long long>(config->vocab_size));
  std::printf(
      "attention    rope theta %g, scaling %s, max positions %lld%s\n", config->rope_theta,
      RopeDescription(*config).c_str(), static_cast<long long>(config->max_position_embeddings),
      config->sliding_window > 0 ? absl::StrCat(", sliding window ", config->sliding_window).c_str()
                                 : "");
  std::printf("options      rms_norm_eps %g, lm_head %s, attention_bias %s, mlp_bias %s\n",
              config->rms_norm_eps, config->tie_word_embeddings ? "tied" : "untied",
              config->attention_bias ? "yes" : "no", config->mlp_bias ? "yes" : "no");
  std::printf("parameters   %s total (%lld): embedding %s, lm_head %s, blocks %s\n",
              FormatCount(total).c_str(), static_cast<long long>(total),
              FormatCount(embedding).c_str(),
              config->tie_word_embeddings ? "tied" : FormatCount(lm_head).c_str(),
              FormatCount(total - embedding - lm_head - other).c_str());
  std::printf("weights      %s in %zu file%s (%s); dtypes %s\n", FormatBytes(bytes).c_str(),
              files.size(), files.size() == 1 ? "" : "s",
              files.size() <= 3 ? absl::StrJoin(files, ", ").c_str()
                                : absl::StrCat(files.front(), " ... ", files.back()).c_str(),
              absl::StrJoin(dtypes, ", ").c_str());
  if (*record) {
    std::printf("expansion    %lld blocks, %zu new in the latest stage: %s\n",
                static_cast<long long>(layers), new_blocks.size(),
                absl::StrJoin(new_blocks, ", ").c_str());
    for (const ExpansionStage& s : (*record)->lineage) {
      std::printf("  stage %lld    %s, %lld -> %lld blocks%s, from %s (%s)\n",
                  static_cast<long long>(s.stage), s.layout.c_str(),
                  static_cast<long long>(s.source_layers), static_cast<long long>(s.target_layers),
                  s.groups > 0 ? absl::StrCat(", ", s.groups, " groups").c_str() : "",
                  s.source_model.c_str(), s.created_at.c_str());
    }
  } else {
    std::printf("expansion    none (no %s)\n", kExpansionFile);
  }
  std::printf("\n%6s  %10s  %s\n", "block", "params", "origin");
  for (int64_t i = 0; i < layers; ++i) {
    std::string origin = "original";
    if (stage[i] > 0) {
      origin = absl::StrCat("new, stage ", stage[i]);
      if (stage[i] == latest) absl::StrAppend(&origin, " (trained in post-pretraining)");
    }
    std::printf("%6lld  %10s  %s\n", static_cast<long long>(i),
                FormatCount(block_params[i]).c_str(), origin.c_str());
  }
}

}  // namespace

void AddInspectCommand(CLI::App& app) {
  auto flags = std::make_shared<InspectFlags>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "Show a checkpoint's architecture, parameters per block, dtypes and expansion.");
  cmd->add_option("--model", flags->model, "Checkpoint directory")->required();
  cmd->add_flag("--json", flags->json, "Print one JSON object instead of the table");
  cmd->callback([flags] { RunInspect(*flags); });
}

}  // namespace llamapro::cli
