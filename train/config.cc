#include "train/config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "yaml-cpp/yaml.h"

namespace llamapro {

absl::string_view TrainableModeName(TrainableConfig::Mode mode) {
  switch (mode) {
    case TrainableConfig::Mode::kExpanded:
      return "expanded";
    case TrainableConfig::Mode::kAll:
      return "all";
    case TrainableConfig::Mode::kLayers:
      return "layers";
    case TrainableConfig::Mode::kLora:
      return "lora";
    case TrainableConfig::Mode::kMoe:
      return "moe";
  }
  return "unknown";
}

absl::string_view PrecisionName(Precision precision) {
  return precision == Precision::kBf16 ? "bf16" : "fp32";
}

absl::StatusOr<int> DeviceOrdinal(absl::string_view device) {
  const std::string value = absl::AsciiStrToLower(device);
  if (value == "cpu") return -1;
  if (value == "cuda") return 0;
  absl::string_view rest = value;
  int ordinal = 0;
  if (absl::ConsumePrefix(&rest, "cuda:") && !rest.empty() &&
      std::all_of(rest.begin(), rest.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      absl::SimpleAtoi(rest, &ordinal)) {
    return ordinal;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device must be cpu, cuda or cuda:N, got \"", device, "\""));
}

absl::Status SetDevice(JobConfig* job, absl::string_view device) {
  auto error = [&](absl::string_view key, absl::string_view message) {
    return absl::InvalidArgumentError(absl::StrCat(job->source, ": ", key, ": ", message));
  };
  absl::StatusOr<int> ordinal = DeviceOrdinal(device);
  if (!ordinal.ok()) {
    return error("device", absl::StrCat("must be cpu, cuda or cuda:N, got \"", device, "\""));
  }
  job->device = *ordinal < 0 ? "cpu" : absl::StrCat("cuda:", *ordinal);
  const bool cuda = *ordinal >= 0;
  if (!job->precision_given) job->precision = cuda ? Precision::kBf16 : Precision::kFp32;
  if (!cuda && job->precision == Precision::kBf16) {
    return error("precision", absl::StrCat("bf16 is the CUDA backend's; on device ", job->device,
                                           " use fp32 (or leave precision out)"));
  }
  if (cuda && job->precision == Precision::kFp32) {
    return error("precision",
                 absl::StrCat("the CUDA backend trains in bf16 mixed precision (fp32 master "
                              "weights, gradients and optimizer state); on device ",
                              job->device, " use bf16 (or leave precision out)"));
  }
  if (!cuda && job->recompute != "none") {
    return error("recompute", absl::StrCat(job->recompute,
                                           " is the CUDA backend's (device: cuda:N); the CPU "
                                           "engine keeps every activation: use none"));
  }
  return absl::OkStatus();
}

namespace {

// --- The schema, for unknown-key suggestions -------------------------------------

struct Section {
  absl::string_view path;  // "" for the top level.
  std::vector<absl::string_view> keys;
};

const std::vector<Section>& Schema() {
  static const auto* const kSchema = new std::vector<Section>{
      {"",
       {"model", "output_dir", "data", "trainable", "lora", "optimizer", "schedule", "batch",
        "steps", "tokens", "eval", "checkpoint", "parallel", "precision", "device", "recompute",
        "threads", "log_interval"}},
      {"parallel", {"dp", "tp", "zero"}},
      {"lora", {"rank", "alpha", "dropout", "targets", "blocks", "export"}},
      {"data", {"store", "mixture", "seq_len", "seed"}},
      {"trainable", {"layers", "embeddings", "norm", "lm_head"}},
      {"optimizer", {"name", "lr", "betas", "eps", "weight_decay", "clip_grad_norm", "momentum"}},
      {"schedule", {"warmup", "warmup_steps", "decay", "min_lr"}},
      {"batch", {"tokens", "sequences", "micro_batch"}},
      {"eval", {"corpora", "interval", "windows", "general"}},
      {"checkpoint", {"interval", "keep"}},
  };
  return *kSchema;
}

const Section& SchemaSection(absl::string_view path) {
  for (const Section& section : Schema()) {
    if (section.path == path) return section;
  }
  return Schema().front();
}

// Names people reach for out of habit (PyTorch, Hugging Face, Megatron):
// alias -> our key, or a full key path where the key lives elsewhere.
const std::vector<std::pair<absl::string_view, absl::string_view>>& Aliases() {
  static const auto* const kAliases =
      new std::vector<std::pair<absl::string_view, absl::string_view>>{
          {"learning_rate", "lr"},
          {"max_lr", "lr"},
          {"peak_lr", "lr"},
          {"lr_min", "min_lr"},
          {"min_learning_rate", "min_lr"},
          {"final_lr", "min_lr"},
          {"end_lr", "min_lr"},
          {"warmup_ratio", "warmup"},
          {"warmup_fraction", "warmup"},
          {"warmup_iters", "warmup_steps"},
          {"num_warmup_steps", "warmup_steps"},
          {"lr_scheduler", "decay"},
          {"lr_scheduler_type", "decay"},
          {"lr_decay_style", "decay"},
          {"scheduler", "decay"},
          {"beta1", "betas"},
          {"beta2", "betas"},
          {"adam_beta1", "betas"},
          {"adam_beta2", "betas"},
          {"epsilon", "eps"},
          {"adam_eps", "eps"},
          {"adam_epsilon", "eps"},
          {"wd", "weight_decay"},
          {"grad_clip", "clip_grad_norm"},
          {"max_grad_norm", "clip_grad_norm"},
          {"clip_grad", "clip_grad_norm"},
          {"gradient_clipping", "clip_grad_norm"},
          {"type", "name"},
          {"seqlen", "seq_len"},
          {"seq_length", "seq_len"},
          {"sequence_length", "seq_len"},
          {"max_seq_len", "seq_len"},
          {"context_length", "seq_len"},
          {"random_seed", "seed"},
          {"store_dir", "store"},
          {"token_store", "store"},
          {"micro_batch_size", "micro_batch"},
          {"per_device_train_batch_size", "micro_batch"},
          {"batch_size", "sequences"},
          {"global_batch_size", "sequences"},
          {"global_batch_tokens", "tokens"},
          {"max_steps", "steps"},
          {"total_steps", "steps"},
          {"train_steps", "steps"},
          {"train_iters", "steps"},
          {"total_tokens", "tokens"},
          {"train_tokens", "tokens"},
          {"eval_interval", "eval.interval"},
          {"eval_steps", "eval.interval"},
          {"save_interval", "checkpoint.interval"},
          {"save_steps", "checkpoint.interval"},
          {"checkpoint_interval", "checkpoint.interval"},
          {"save_total_limit", "checkpoint.keep"},
          {"keep_last", "keep"},
          {"output", "output_dir"},
          {"out_dir", "output_dir"},
          {"output_path", "output_dir"},
          {"model_path", "model"},
          {"model_dir", "model"},
          {"dtype", "precision"},
          {"num_threads", "threads"},
          {"log_every", "log_interval"},
          {"logging_steps", "log_interval"},
      };
  return *kAliases;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string JoinKey(absl::string_view parent, absl::string_view key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

// " (did you mean X?)" for an unknown `key` in section `section`, or "".
std::string Suggestion(absl::string_view section, absl::string_view key) {
  const std::string lower = absl::AsciiStrToLower(key);
  std::vector<std::string> candidates = {lower};
  for (const auto& [alias, target] : Aliases()) {
    if (alias == lower) candidates.emplace_back(target);
  }
  const Section& here = SchemaSection(section);
  auto in = [](const Section& s, absl::string_view k) {
    return std::find(s.keys.begin(), s.keys.end(), k) != s.keys.end();
  };
  for (const std::string& candidate : candidates) {
    const size_t dot = candidate.rfind('.');
    if (dot != std::string::npos) {  // A full path.
      const absl::string_view parent = absl::string_view(candidate).substr(0, dot);
      return absl::StrCat(" (did you mean ",
                          parent == section ? candidate.substr(dot + 1) : candidate, "?)");
    }
    if (candidate != key && in(here, candidate)) {
      return absl::StrCat(" (did you mean ", candidate, "?)");
    }
  }
  // The key (or its alias) belongs to another section.
  std::vector<std::string> elsewhere;
  for (const std::string& candidate : candidates) {
    for (const Section& s : Schema()) {
      if (s.path != section && in(s, candidate)) {
        std::string path = JoinKey(s.path, candidate);
        if (std::find(elsewhere.begin(), elsewhere.end(), path) == elsewhere.end()) {
          elsewhere.push_back(std::move(path));
        }
      }
    }
    if (!elsewhere.empty()) break;
  }
  if (!elsewhere.empty()) {
    return absl::StrCat(" (did you mean ", absl::StrJoin(elsewhere, " or "), "?)");
  }
  // Otherwise a close spelling in this section.
  absl::string_view best;
  size_t best_distance = std::max<size_t>(2, lower.size() / 3) + 1;
  for (absl::string_view k : here.keys) {
    const size_t d = EditDistance(lower, k);
    if (d < best_distance) {
      best = k;
      best_distance = d;
    }
  }
  if (!best.empty()) return absl::StrCat(" (did you mean ", best, "?)");
  return "";
}

// --- Reading nodes ------------------------------------------------------------------

bool Present(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

bool IsPlain(const YAML::Node& node) { return node.Tag() == "?"; }

// How a value is shown in errors: numbers and other plain words bare only
// where that reads unambiguously, strings quoted, collections by kind.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return absl::StrCat("a list of ", node.size());
    case YAML::NodeType::Scalar: {
      double unused;
      if (IsPlain(node) && absl::SimpleAtod(node.Scalar(), &unused)) return node.Scalar();
      return absl::StrCat("\"", absl::CEscape(node.Scalar()), "\"");
    }
    default:
      return "nothing";
  }
}

class Parser {
 public:
  Parser(absl::string_view source, absl::string_view base_dir)
      : source_(source), base_dir_(base_dir) {}

  absl::Status Error(absl::string_view path, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path, ": ", message));
  }
  absl::Status Got(absl::string_view path, absl::string_view want, const YAML::Node& node) const {
    return Error(path, absl::StrCat("must be ", want, ", got ", Describe(node)));
  }

  // `node` (at `path`, a section of the schema) must be a map whose keys are
  // distinct and all known.
  absl::Status CheckMap(const YAML::Node& node, absl::string_view path) const {
    const Section& section = SchemaSection(path);
    if (!node.IsMap()) {
      return Got(path.empty() ? "(top level)" : path,
                 absl::StrCat("a map with keys ", absl::StrJoin(section.keys, ", ")), node);
    }
    absl::flat_hash_set<std::string> seen;
    for (const auto& entry : node) {
      if (!entry.first.IsScalar()) {
        return Error(path.empty() ? "(top level)" : path, "keys must be plain words");
      }
      const std::string& key = entry.first.Scalar();
      const std::string key_path = JoinKey(path, key);
      if (!seen.insert(key).second) return Error(key_path, "duplicate key");
      if (std::find(section.keys.begin(), section.keys.end(), key) == section.keys.end()) {
        std::string hint = Suggestion(path, key);
        if (hint.empty()) {
          hint = absl::StrCat("; ", path.empty() ? "the top level" : path, " takes ",
                              absl::StrJoin(section.keys, ", "));
        }
        return Error(key_path, absl::StrCat("unknown key", hint));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> String(const YAML::Node& node, absl::string_view path) const {
    if (!node.IsScalar() || node.Scalar().empty()) return Got(path, "a non-empty string", node);
    return node.Scalar();
  }

  absl::StatusOr<std::string> RequiredString(const YAML::Node& node, absl::string_view path,
                                             absl::string_view what) const {
    if (!Present(node)) return Error(path, absl::StrCat("is required (", what, ")"));
    return String(node, path);
  }

  // A path, resolved against the config's directory when relative.
  absl::StatusOr<std::string> Path(const YAML::Node& node, absl::string_view path,
                                   absl::string_view what) const {
    LP_ASSIGN_OR_RETURN(std::string value, RequiredString(node, path, what));
    std::filesystem::path p(value);
    if (p.is_relative() && !base_dir_.empty()) p = std::filesystem::path(base_dir_) / p;
    std::string resolved = p.lexically_normal().string();
    while (resolved.size() > 1 && resolved.back() == '/') resolved.pop_back();
    return resolved;
  }

  // A finite number; `want` describes the allowed range for the message.
  absl::StatusOr<double> Number(const YAML::Node& node, absl::string_view path,
                                absl::string_view want) const {
    double value;
    if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &value) || !std::isfinite(value)) {
      return Got(path, want, node);
    }
    return value;
  }

  absl::StatusOr<double> NumberOr(const YAML::Node& node, absl::string_view path, double fallback,
                                  double min, bool min_inclusive, double max, bool max_inclusive,
                                  absl::string_view want) const {
    if (!Present(node)) return fallback;
    LP_ASSIGN_OR_RETURN(double value, Number(node, path, want));
    if ((min_inclusive ? value < min : value <= min) ||
        (max_inclusive ? value > max : value >= max)) {
      return Got(path, want, node);
    }
    return value;
  }

  // An integer: digits (underscores allowed between them, as in 4_194_304),
  // or an exactly integral number in exponent notation (8.0e10).
  absl::StatusOr<int64_t> Integer(const YAML::Node& node, absl::string_view path, int64_t min,
                                  absl::string_view want) const {
    if (!node.IsScalar()) return Got(path, want, node);
    const std::string text = absl::StrReplaceAll(node.Scalar(), {{"_", ""}});
    int64_t value;
    double real;
    if (!absl::SimpleAtoi(text, &value)) {
      if (!absl::SimpleAtod(text, &real) || !std::isfinite(real) || real != std::floor(real) ||
          std::fabs(real) > 9.0e15) {
        return Got(path, want, node);
      }
      value = static_cast<int64_t>(real);
    }
    if (value < min) return Got(path, want, node);
    return value;
  }

  absl::StatusOr<int64_t> IntegerOr(const YAML::Node& node, absl::string_view path,
                                    int64_t fallback, int64_t min, absl::string_view want) const {
    if (!Present(node)) return fallback;
    return Integer(node, path, min, want);
  }

  absl::StatusOr<bool> BoolOr(const YAML::Node& node, absl::string_view path, bool fallback) const {
    if (!Present(node)) return fallback;
    if (node.IsScalar() && IsPlain(node)) {
      const std::string text = absl::AsciiStrToLower(node.Scalar());
      if (text == "true") return true;
      if (text == "false") return false;
    }
    return Got(path, "true or false", node);
  }

  // One of `choices` (exact, lower case).
  absl::StatusOr<std::string> ChoiceOr(const YAML::Node& node, absl::string_view path,
                                       absl::string_view fallback,
                                       const std::vector<absl::string_view>& choices) const {
    if (!Present(node)) return std::string(fallback);
    const std::string want = absl::StrCat("one of ", absl::StrJoin(choices, ", "));
    if (!node.IsScalar()) return Got(path, want, node);
    const std::string value = absl::AsciiStrToLower(node.Scalar());
    if (std::find(choices.begin(), choices.end(), value) == choices.end()) {
      return Got(path, want, node);
    }
    return value;
  }

  // A list of distinct non-empty names, or one string of comma-separated names.
  absl::StatusOr<std::vector<std::string>> Names(const YAML::Node& node,
                                                 absl::string_view path) const {
    std::vector<std::string> names;
    if (node.IsScalar()) {
      for (absl::string_view part : absl::StrSplit(node.Scalar(), ',', absl::SkipWhitespace())) {
        names.emplace_back(absl::StripAsciiWhitespace(part));
      }
    } else if (node.IsSequence()) {
      for (size_t i = 0; i < node.size(); ++i) {
        LP_ASSIGN_OR_RETURN(std::string name, String(node[i], absl::StrCat(path, "[", i, "]")));
        names.push_back(std::move(name));
      }
    } else {
      return Got(path, "a list of corpus names", node);
    }
    if (names.empty()) return Got(path, "a non-empty list of corpus names", node);
    for (size_t i = 0; i < names.size(); ++i) {
      if (std::find(names.begin(), names.begin() + i, names[i]) != names.begin() + i) {
        return Error(path, absl::StrCat("'", names[i], "' appears twice"));
      }
    }
    return names;
  }

  absl::StatusOr<JobConfig> Parse(const YAML::Node& root) const;

 private:
  absl::Status ParseData(const YAML::Node& node, DataConfig* data) const;
  absl::StatusOr<std::vector<MixtureComponent>> ParseMixtureNode(const YAML::Node& node,
                                                                 absl::string_view path) const;
  absl::Status ParseTrainable(const YAML::Node& node, TrainableConfig* trainable) const;
  absl::Status ParseLora(const YAML::Node& node, const TrainableConfig& trainable,
                         LoraConfig* lora) const;
  absl::Status ParseOptimizer(const YAML::Node& node, OptimizerConfig* optimizer) const;
  absl::Status ParseSchedule(const YAML::Node& node, const JobConfig& job,
                             ScheduleConfig* schedule) const;
  absl::Status ParseBatch(const YAML::Node& node, int64_t seq_len, BatchConfig* batch) const;
  absl::Status ParseSteps(const YAML::Node& root, JobConfig* job) const;
  absl::Status ParseParallel(const YAML::Node& node, const JobConfig& job,
                             ParallelConfig* parallel) const;
  absl::Status ParseEval(const YAML::Node& node, const std::vector<MixtureComponent>& mixture,
                         EvalConfig* eval) const;
  absl::Status ParseCheckpoint(const YAML::Node& node, CheckpointConfig* checkpoint) const;
  absl::Status ParseRuntime(const YAML::Node& root, JobConfig* job) const;

  std::string source_;
  std::string base_dir_;
};

absl::StatusOr<std::vector<MixtureComponent>> Parser::ParseMixtureNode(
    const YAML::Node& node, absl::string_view path) const {
  constexpr absl::string_view kWant =
      "a map of corpus to weight, a list of corpus names, or \"name:weight,...\"";
  if (!Present(node)) return Error(path, absl::StrCat("is required (", kWant, ")"));
  std::vector<MixtureComponent> mixture;
  auto add = [&](MixtureComponent component, absl::string_view at) -> absl::Status {
    for (const MixtureComponent& other : mixture) {
      if (other.corpus == component.corpus) {
        return Error(at, absl::StrCat("corpus '", component.corpus, "' appears twice"));
      }
    }
    mixture.push_back(std::move(component));
    return absl::OkStatus();
  };
  if (node.IsScalar()) {
    auto parsed = ParseMixture(node.Scalar());
    if (!parsed.ok()) return Error(path, parsed.status().message());
    return *std::move(parsed);
  }
  if (node.IsSequence()) {
    if (node.size() == 0) return Got(path, kWant, node);
    for (size_t i = 0; i < node.size(); ++i) {
      const std::string at = absl::StrCat(path, "[", i, "]");
      LP_ASSIGN_OR_RETURN(std::string entry, String(node[i], at));
      auto parsed = ParseMixture(entry);
      if (!parsed.ok()) return Error(at, parsed.status().message());
      if (parsed->size() != 1) return Got(at, "one corpus name (or name:weight)", node[i]);
      LP_RETURN_IF_ERROR(add(std::move(parsed->front()), at));
    }
    return mixture;
  }
  if (node.IsMap()) {
    if (node.size() == 0) return Got(path, kWant, node);
    for (const auto& entry : node) {
      if (!entry.first.IsScalar() || entry.first.Scalar().empty()) {
        return Error(path, "corpus names must be non-empty strings");
      }
      const std::string at = absl::StrCat(path, ".", entry.first.Scalar());
      MixtureComponent component;
      component.corpus = entry.first.Scalar();
      LP_ASSIGN_OR_RETURN(component.weight, NumberOr(entry.second, at, -1, 0, false,
                                                     std::numeric_limits<double>::infinity(), false,
                                                     "a positive weight"));
      if (component.weight < 0) return Error(at, "needs a weight (a positive number)");
      LP_RETURN_IF_ERROR(add(std::move(component), at));
    }
    return mixture;
  }
  return Got(path, kWant, node);
}

absl::Status Parser::ParseData(const YAML::Node& node, DataConfig* data) const {
  if (!Present(node)) return Error("data", "is required (mixture, seq_len, and store)");
  LP_RETURN_IF_ERROR(CheckMap(node, "data"));
  // Optional: a job submitted to a coordinator reads its data from the
  // coordinator's store (the trainer requires it when training embedded).
  if (Present(node["store"])) {
    LP_ASSIGN_OR_RETURN(data->store,
                        Path(node["store"], "data.store", "the token store directory"));
  }
  LP_ASSIGN_OR_RETURN(data->mixture, ParseMixtureNode(node["mixture"], "data.mixture"));
  if (!Present(node["seq_len"])) {
    return Error("data.seq_len", "is required (tokens per training sequence, e.g. 4096)");
  }
  LP_ASSIGN_OR_RETURN(data->seq_len,
                      Integer(node["seq_len"], "data.seq_len", 1, "a positive integer"));
  if (data->seq_len > (int64_t{1} << 24)) {
    return Got("data.seq_len", "at most 16777216", node["seq_len"]);
  }
  LP_ASSIGN_OR_RETURN(int64_t seed,
                      IntegerOr(node["seed"], "data.seed", 0, 0, "a non-negative integer"));
  data->seed = static_cast<uint64_t>(seed);
  return absl::OkStatus();
}

absl::Status Parser::ParseLora(const YAML::Node& node, const TrainableConfig& trainable,
                               LoraConfig* lora) const {
  *lora = LoraConfig();
  if (!Present(node)) return absl::OkStatus();
  if (trainable.mode != TrainableConfig::Mode::kLora) {
    return Error("lora", "applies only with 'trainable: lora'");
  }
  LP_RETURN_IF_ERROR(CheckMap(node, "lora"));
  LP_ASSIGN_OR_RETURN(lora->rank,
                      IntegerOr(node["rank"], "lora.rank", lora->rank, 1, "an integer >= 1"));
  LP_ASSIGN_OR_RETURN(lora->alpha, NumberOr(node["alpha"], "lora.alpha", lora->alpha, 0, false, 1e9,
                                            true, "a number > 0"));
  LP_ASSIGN_OR_RETURN(lora->dropout, NumberOr(node["dropout"], "lora.dropout", 0, 0, true, 1, false,
                                              "a number in [0, 1)"));
  if (lora->dropout != 0) {
    return Error("lora.dropout",
                 "only 0 is supported (this engine's LoRA has no dropout on the adapter input)");
  }
  if (Present(node["targets"])) {
    LP_ASSIGN_OR_RETURN(lora->targets, Names(node["targets"], "lora.targets"));
    static const std::vector<std::string> kKnown = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                    "gate_proj", "up_proj", "down_proj"};
    for (const std::string& t : lora->targets) {
      if (std::find(kKnown.begin(), kKnown.end(), t) == kKnown.end()) {
        return Error("lora.targets", absl::StrCat("unknown target '", t, "' (one of ",
                                                  absl::StrJoin(kKnown, ", "), ")"));
      }
    }
    if (lora->targets.empty()) return Error("lora.targets", "name at least one weight");
  }
  LP_ASSIGN_OR_RETURN(std::string blocks,
                      ChoiceOr(node["blocks"], "lora.blocks", "all", {"all", "new"}));
  lora->new_blocks_only = blocks == "new";
  LP_ASSIGN_OR_RETURN(std::string mode,
                      ChoiceOr(node["export"], "lora.export", "merged", {"merged", "adapter"}));
  lora->merge = mode == "merged";
  return absl::OkStatus();
}

absl::Status Parser::ParseTrainable(const YAML::Node& node, TrainableConfig* trainable) const {
  *trainable = TrainableConfig();
  if (!Present(node)) return absl::OkStatus();
  trainable->explicit_ = true;
  constexpr absl::string_view kWant =
      "expanded, all, lora, moe, or a map {layers: [...], embeddings, norm, lm_head}";
  if (node.IsScalar()) {
    const std::string mode = absl::AsciiStrToLower(node.Scalar());
    if (mode == "expanded") {
      trainable->mode = TrainableConfig::Mode::kExpanded;
    } else if (mode == "all") {
      trainable->mode = TrainableConfig::Mode::kAll;
      trainable->embeddings = trainable->norm = trainable->lm_head = true;
    } else if (mode == "lora") {
      trainable->mode = TrainableConfig::Mode::kLora;
    } else if (mode == "moe") {
      trainable->mode = TrainableConfig::Mode::kMoe;
    } else {
      return Got("trainable", kWant, node);
    }
    return absl::OkStatus();
  }
  if (!node.IsMap()) return Got("trainable", kWant, node);
  LP_RETURN_IF_ERROR(CheckMap(node, "trainable"));
  trainable->mode = TrainableConfig::Mode::kLayers;
  const YAML::Node layers = node["layers"];
  if (!Present(layers)) {
    return Error("trainable.layers", "is required (block indices, e.g. [3, 7]; [] for none)");
  }
  if (!layers.IsSequence()) return Got("trainable.layers", "a list of block indices", layers);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string at = absl::StrCat("trainable.layers[", i, "]");
    LP_ASSIGN_OR_RETURN(int64_t layer, Integer(layers[i], at, 0, "a block index (>= 0)"));
    if (std::find(trainable->layers.begin(), trainable->layers.end(), layer) !=
        trainable->layers.end()) {
      return Error(at, absl::StrCat("block ", layer, " is listed twice"));
    }
    trainable->layers.push_back(layer);
  }
  std::sort(trainable->layers.begin(), trainable->layers.end());
  LP_ASSIGN_OR_RETURN(trainable->embeddings,
                      BoolOr(node["embeddings"], "trainable.embeddings", false));
  LP_ASSIGN_OR_RETURN(trainable->norm, BoolOr(node["norm"], "trainable.norm", false));
  LP_ASSIGN_OR_RETURN(trainable->lm_head, BoolOr(node["lm_head"], "trainable.lm_head", false));
  if (trainable->layers.empty() && !trainable->embeddings && !trainable->norm &&
      !trainable->lm_head) {
    return Error("trainable",
                 "nothing would train: list layers or set embeddings, norm or lm_head");
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseOptimizer(const YAML::Node& node, OptimizerConfig* optimizer) const {
  *optimizer = OptimizerConfig();
  if (!Present(node)) return Error("optimizer", "is required (at least optimizer.lr)");
  LP_RETURN_IF_ERROR(CheckMap(node, "optimizer"));
  LP_ASSIGN_OR_RETURN(optimizer->name,
                      ChoiceOr(node["name"], "optimizer.name", "adamw", {"adamw", "sgd"}));
  const bool adamw = optimizer->name == "adamw";
  if (!Present(node["lr"])) {
    return Error("optimizer.lr", "is required (the peak learning rate, e.g. 2.0e-4)");
  }
  constexpr double kInf = std::numeric_limits<double>::infinity();
  LP_ASSIGN_OR_RETURN(optimizer->lr, NumberOr(node["lr"], "optimizer.lr", 0, 0, false, kInf, false,
                                              "a positive number"));
  for (absl::string_view key : {"betas", "eps"}) {
    if (!adamw && Present(node[std::string(key)])) {
      return Error(absl::StrCat("optimizer.", key), "is an adamw setting; optimizer.name is sgd");
    }
  }
  if (adamw && Present(node["momentum"])) {
    return Error("optimizer.momentum", "is an sgd setting; optimizer.name is adamw");
  }
  if (const YAML::Node betas = node["betas"]; Present(betas)) {
    constexpr absl::string_view kWant = "a list of two numbers in [0, 1), e.g. [0.9, 0.95]";
    if (!betas.IsSequence() || betas.size() != 2) return Got("optimizer.betas", kWant, betas);
    LP_ASSIGN_OR_RETURN(optimizer->beta1, NumberOr(betas[0], "optimizer.betas[0]", 0, 0, true, 1,
                                                   false, "a number in [0, 1)"));
    LP_ASSIGN_OR_RETURN(optimizer->beta2, NumberOr(betas[1], "optimizer.betas[1]", 0, 0, true, 1,
                                                   false, "a number in [0, 1)"));
  }
  LP_ASSIGN_OR_RETURN(optimizer->eps, NumberOr(node["eps"], "optimizer.eps", optimizer->eps, 0,
                                               false, kInf, false, "a positive number"));
  LP_ASSIGN_OR_RETURN(optimizer->weight_decay,
                      NumberOr(node["weight_decay"], "optimizer.weight_decay", adamw ? 0.1 : 0.0, 0,
                               true, kInf, false, "a non-negative number"));
  LP_ASSIGN_OR_RETURN(optimizer->clip_grad_norm,
                      NumberOr(node["clip_grad_norm"], "optimizer.clip_grad_norm", 1.0, 0, true,
                               kInf, false, "a non-negative number (0 = no clipping)"));
  LP_ASSIGN_OR_RETURN(optimizer->momentum, NumberOr(node["momentum"], "optimizer.momentum", 0, 0,
                                                    true, 1, false, "a number in [0, 1)"));
  return absl::OkStatus();
}

absl::Status Parser::ParseBatch(const YAML::Node& node, int64_t seq_len, BatchConfig* batch) const {
  *batch = BatchConfig();
  if (!Present(node)) {
    return Error("batch", "is required (batch.tokens or batch.sequences, and batch.micro_batch)");
  }
  LP_RETURN_IF_ERROR(CheckMap(node, "batch"));
  LP_ASSIGN_OR_RETURN(batch->micro_batch, IntegerOr(node["micro_batch"], "batch.micro_batch", 1, 1,
                                                    "a positive integer (sequences)"));
  const bool in_tokens = Present(node["tokens"]);
  const bool in_sequences = Present(node["sequences"]);
  if (in_tokens == in_sequences) {
    return Error(in_tokens ? "batch.tokens" : "batch",
                 in_tokens ? "give batch.tokens or batch.sequences, not both"
                           : "needs the global batch: batch.tokens or batch.sequences");
  }
  if (batch->micro_batch > std::numeric_limits<int64_t>::max() / seq_len) {
    return Error("batch.micro_batch", "is too large");
  }
  const int64_t micro_tokens = batch->micro_batch * seq_len;
  if (in_tokens) {
    LP_ASSIGN_OR_RETURN(batch->global_tokens,
                        Integer(node["tokens"], "batch.tokens", 1, "a positive integer"));
    if (batch->global_tokens % micro_tokens != 0) {
      return Error(
          "batch.tokens",
          absl::StrCat(batch->global_tokens, " is not a multiple of micro_batch x seq_len = ",
                       batch->micro_batch, " x ", seq_len, " = ", micro_tokens));
    }
    batch->global_sequences = batch->global_tokens / seq_len;
  } else {
    LP_ASSIGN_OR_RETURN(batch->global_sequences,
                        Integer(node["sequences"], "batch.sequences", 1, "a positive integer"));
    if (batch->micro_batch > batch->global_sequences) {
      return Error(
          "batch.micro_batch",
          absl::StrCat(batch->micro_batch, " exceeds batch.sequences ", batch->global_sequences));
    }
    if (batch->global_sequences % batch->micro_batch != 0) {
      return Error("batch.sequences",
                   absl::StrCat(batch->global_sequences, " is not a multiple of batch.micro_batch ",
                                batch->micro_batch));
    }
    if (batch->global_sequences > std::numeric_limits<int64_t>::max() / seq_len) {
      return Error("batch.sequences", "is too large");
    }
    batch->global_tokens = batch->global_sequences * seq_len;
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseSteps(const YAML::Node& root, JobConfig* job) const {
  const bool has_steps = Present(root["steps"]);
  const bool has_tokens = Present(root["tokens"]);
  if (has_steps && has_tokens) return Error("steps", "give steps or tokens, not both");
  if (!has_steps && !has_tokens) {
    return Error("steps", "is required (or tokens: the run's length in training tokens)");
  }
  if (has_steps) {
    LP_ASSIGN_OR_RETURN(job->steps, Integer(root["steps"], "steps", 1, "a positive integer"));
    job->tokens = 0;
  } else {
    LP_ASSIGN_OR_RETURN(job->tokens, Integer(root["tokens"], "tokens", 1, "a positive integer"));
    job->steps = (job->tokens + job->batch.global_tokens - 1) / job->batch.global_tokens;
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseSchedule(const YAML::Node& node, const JobConfig& job,
                                   ScheduleConfig* schedule) const {
  *schedule = ScheduleConfig();
  schedule->lr = job.optimizer.lr;
  if (!Present(node)) return absl::OkStatus();
  LP_RETURN_IF_ERROR(CheckMap(node, "schedule"));
  const YAML::Node warmup = node["warmup"];
  const YAML::Node warmup_steps = node["warmup_steps"];
  if (Present(warmup) && Present(warmup_steps)) {
    return Error("schedule.warmup", "give schedule.warmup or schedule.warmup_steps, not both");
  }
  if (Present(warmup)) {
    constexpr absl::string_view kWant = "a fraction of the run in [0, 1] (e.g. 0.06 or \"6%\")";
    absl::string_view text = warmup.IsScalar() ? absl::string_view(warmup.Scalar()) : "";
    double scale = 1;
    if (absl::ConsumeSuffix(&text, "%")) scale = 0.01;
    double ratio;
    if (!absl::SimpleAtod(text, &ratio) || !std::isfinite(ratio) || ratio * scale < 0 ||
        ratio * scale > 1) {
      return Got("schedule.warmup", kWant, warmup);
    }
    schedule->warmup_ratio = ratio * scale;
  }
  if (Present(warmup_steps)) {
    LP_ASSIGN_OR_RETURN(schedule->warmup_steps, Integer(warmup_steps, "schedule.warmup_steps", 0,
                                                        "a non-negative integer"));
    if (schedule->warmup_steps > job.steps) {
      return Error(
          "schedule.warmup_steps",
          absl::StrCat(schedule->warmup_steps, " exceeds the run's ", job.steps, " steps"));
    }
  }
  LP_ASSIGN_OR_RETURN(std::string decay, ChoiceOr(node["decay"], "schedule.decay", "cosine",
                                                  {"cosine", "linear", "constant"}));
  schedule->decay = decay == "cosine"   ? ScheduleConfig::Decay::kCosine
                    : decay == "linear" ? ScheduleConfig::Decay::kLinear
                                        : ScheduleConfig::Decay::kConstant;
  if (Present(node["min_lr"]) && schedule->decay == ScheduleConfig::Decay::kConstant) {
    return Error("schedule.min_lr", "has no effect with schedule.decay: constant");
  }
  LP_ASSIGN_OR_RETURN(schedule->min_lr, NumberOr(node["min_lr"], "schedule.min_lr", 0, 0, true,
                                                 std::numeric_limits<double>::infinity(), false,
                                                 "a non-negative number"));
  if (schedule->min_lr > schedule->lr) {
    return Error("schedule.min_lr",
                 absl::StrCat(schedule->min_lr, " exceeds optimizer.lr ", schedule->lr));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseEval(const YAML::Node& node, const std::vector<MixtureComponent>& mixture,
                               EvalConfig* eval) const {
  *eval = EvalConfig();
  if (!Present(node)) return absl::OkStatus();
  LP_RETURN_IF_ERROR(CheckMap(node, "eval"));
  if (!Present(node["corpora"])) {
    return Error("eval.corpora", "is required when eval is given (held-out corpora to score)");
  }
  LP_ASSIGN_OR_RETURN(eval->corpora, Names(node["corpora"], "eval.corpora"));
  LP_ASSIGN_OR_RETURN(eval->interval, IntegerOr(node["interval"], "eval.interval", eval->interval,
                                                1, "a positive integer (steps)"));
  LP_ASSIGN_OR_RETURN(eval->windows, IntegerOr(node["windows"], "eval.windows", eval->windows, 1,
                                               "a positive integer"));
  if (Present(node["general"])) {
    LP_ASSIGN_OR_RETURN(eval->general, Names(node["general"], "eval.general"));
    for (const std::string& name : eval->general) {
      if (std::find(eval->corpora.begin(), eval->corpora.end(), name) == eval->corpora.end()) {
        return Error("eval.general", absl::StrCat("\"", name, "\" is not one of eval.corpora (",
                                                  absl::StrJoin(eval->corpora, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }
  // Default: the corpora the mixture does not weight most (absent: weight 0).
  double top = 0;
  for (const MixtureComponent& c : mixture) top = std::max(top, c.weight);
  for (const std::string& name : eval->corpora) {
    double weight = 0;
    for (const MixtureComponent& c : mixture) {
      if (c.corpus == name) weight = c.weight;
    }
    if (weight < top) eval->general.push_back(name);
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseCheckpoint(const YAML::Node& node, CheckpointConfig* checkpoint) const {
  *checkpoint = CheckpointConfig();
  if (!Present(node)) return absl::OkStatus();
  LP_RETURN_IF_ERROR(CheckMap(node, "checkpoint"));
  LP_ASSIGN_OR_RETURN(checkpoint->interval,
                      IntegerOr(node["interval"], "checkpoint.interval", 0, 0,
                                "a non-negative integer (steps; 0 = only at the end)"));
  LP_ASSIGN_OR_RETURN(checkpoint->keep, IntegerOr(node["keep"], "checkpoint.keep", checkpoint->keep,
                                                  1, "a positive integer"));
  return absl::OkStatus();
}

absl::Status Parser::ParseParallel(const YAML::Node& node, const JobConfig& job,
                                   ParallelConfig* parallel) const {
  *parallel = ParallelConfig();
  if (!Present(node)) return absl::OkStatus();
  LP_RETURN_IF_ERROR(CheckMap(node, "parallel"));
  parallel->given = true;
  LP_ASSIGN_OR_RETURN(int64_t tp,
                      IntegerOr(node["tp"], "parallel.tp", 1, 1,
                                "a positive integer (ranks per tensor-parallel group)"));
  // dp absent: the job's world size / tp (checked when the job starts).
  LP_ASSIGN_OR_RETURN(int64_t dp, IntegerOr(node["dp"], "parallel.dp", 0, 1,
                                            "a positive integer (data-parallel replicas)"));
  if (tp > 1024 || dp > 1024) return Error("parallel", "dp and tp are at most 1024");
  LP_ASSIGN_OR_RETURN(
      int64_t zero, IntegerOr(node["zero"], "parallel.zero", 0, 0, "0 (off) or 1 (ZeRO stage 1)"));
  if (zero > 1) {
    return Error("parallel.zero",
                 absl::StrCat(zero, ": only stage 1 (optimizer state sharded) is implemented"));
  }
  parallel->tp = static_cast<int>(tp);
  parallel->dp = static_cast<int>(dp);
  parallel->zero1 = zero == 1;
  if (tp > 1 && (job.trainable.mode == TrainableConfig::Mode::kLora ||
                 job.trainable.mode == TrainableConfig::Mode::kMoe)) {
    return Error("parallel.tp", "tensor parallelism does not support 'trainable: lora' or 'moe'");
  }
  if (dp > 0 && job.batch.global_sequences % (dp * job.batch.micro_batch) != 0) {
    return Error("parallel.dp",
                 absl::StrCat(job.batch.global_sequences, " sequences per step do not split into ",
                              dp, " replicas of whole micro-batches of ", job.batch.micro_batch));
  }
  return absl::OkStatus();
}

absl::Status Parser::ParseRuntime(const YAML::Node& root, JobConfig* job) const {
  std::string device = "cpu";
  if (const YAML::Node node = root["device"]; Present(node)) {
    LP_ASSIGN_OR_RETURN(device, String(node, "device"));
    if (!DeviceOrdinal(device).ok()) return Got("device", "cpu, cuda or cuda:N", node);
  }
  LP_ASSIGN_OR_RETURN(std::string precision,
                      ChoiceOr(root["precision"], "precision", "fp32", {"fp32", "bf16"}));
  job->precision_given = Present(root["precision"]);
  job->precision = precision == "bf16" ? Precision::kBf16 : Precision::kFp32;
  LP_ASSIGN_OR_RETURN(job->recompute, ChoiceOr(root["recompute"], "recompute", "none",
                                               {"none", "attention", "full"}));
  // Precision and recompute depend on the device.
  LP_RETURN_IF_ERROR(SetDevice(job, device));
  LP_ASSIGN_OR_RETURN(int64_t threads, IntegerOr(root["threads"], "threads", 0, 0,
                                                 "a non-negative integer (0 = all cores)"));
  if (threads > 65536) return Got("threads", "at most 65536", root["threads"]);
  job->threads = static_cast<int>(threads);
  LP_ASSIGN_OR_RETURN(job->log_interval, IntegerOr(root["log_interval"], "log_interval", 1, 1,
                                                   "a positive integer (steps)"));
  return absl::OkStatus();
}

absl::StatusOr<JobConfig> Parser::Parse(const YAML::Node& root) const {
  if (!Present(root)) return absl::InvalidArgumentError(absl::StrCat(source_, ": empty config"));
  LP_RETURN_IF_ERROR(CheckMap(root, ""));
  JobConfig job;
  job.source = source_;
  LP_ASSIGN_OR_RETURN(
      job.model, Path(root["model"], "model", "the Hugging Face checkpoint directory to train"));
  LP_ASSIGN_OR_RETURN(job.output_dir,
                      Path(root["output_dir"], "output_dir", "where checkpoints and logs go"));
  LP_RETURN_IF_ERROR(ParseData(root["data"], &job.data));
  LP_RETURN_IF_ERROR(ParseTrainable(root["trainable"], &job.trainable));
  LP_RETURN_IF_ERROR(ParseLora(root["lora"], job.trainable, &job.lora));
  LP_RETURN_IF_ERROR(ParseOptimizer(root["optimizer"], &job.optimizer));
  LP_RETURN_IF_ERROR(ParseBatch(root["batch"], job.data.seq_len, &job.batch));
  LP_RETURN_IF_ERROR(ParseSteps(root, &job));
  LP_RETURN_IF_ERROR(ParseSchedule(root["schedule"], job, &job.schedule));
  LP_RETURN_IF_ERROR(ParseEval(root["eval"], job.data.mixture, &job.eval));
  LP_RETURN_IF_ERROR(ParseCheckpoint(root["checkpoint"], &job.checkpoint));
  LP_RETURN_IF_ERROR(ParseParallel(root["parallel"], job, &job.parallel));
  LP_RETURN_IF_ERROR(ParseRuntime(root, &job));
  return job;
}

}  // namespace

absl::StatusOr<JobConfig> ParseJobConfig(absl::string_view yaml_text, absl::string_view source,
                                         absl::string_view base_dir) {
  try {
    const YAML::Node root = YAML::Load(std::string(yaml_text));
    return Parser(source, base_dir).Parse(root);
  } catch (const YAML::Exception& e) {
    if (!e.mark.is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", e.mark.line + 1, ":",
                                                     e.mark.column + 1, ": invalid YAML: ", e.msg));
    }
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid YAML: ", e.msg));
  }
}

absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path) {
  LP_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (ec) absolute = path;
  return ParseJobConfig(text, path, absolute.lexically_normal().parent_path().string());
}

}  // namespace llamapro
