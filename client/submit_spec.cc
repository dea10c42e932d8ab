#include "client/submit_spec.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/check.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "rpc/rpc.h"
#include "train/config.h"
#include "yaml-cpp/yaml.h"

namespace llamapro::client {
namespace {

using Keys = std::vector<absl::string_view>;

// Keys every document may have, whatever its kind.
const Keys& SubmitKeys() {
  static const auto* const kKeys =
      new Keys{"kind", "name", "world_size", "depends_on", "max_restarts", "resume"};
  return *kKeys;
}

// The keys of ExpandJob, EvalJob and IngestJob.
const Keys& KindKeys(v1::JobKind kind) {
  static const auto* const kExpand = new Keys{
      "model", "out", "add_blocks", "groups", "layout", "positions", "dtype", "verify", "force"};
  static const auto* const kEval =
      new Keys{"model", "corpora", "seq_len", "windows", "task",       "tasks",       "fewshot",
               "shots", "seed",    "prompts", "base",    "max_tokens", "temperature", "top_p",
               "stop",  "samples", "timeout", "limit",   "results"};
  static const auto* const kIngest =
      new Keys{"corpus",      "tokenizer", "inputs",     "format",       "text_field",
               "split_lines", "held_out",  "sft_format", "chat_template"};
  static const auto* const kNone = new Keys{};
  switch (kind) {
    case v1::JOB_KIND_EXPAND:
      return *kExpand;
    case v1::JOB_KIND_EVAL:
      return *kEval;
    case v1::JOB_KIND_INGEST:
      return *kIngest;
    default:
      return *kNone;
  }
}

bool Contains(const Keys& keys, absl::string_view key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

bool Present(const YAML::Node& node) { return node.IsDefined() && !node.IsNull(); }

// How a value is shown in errors: scalars quoted, collections by kind.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return absl::StrCat("a list of ", node.size());
    case YAML::NodeType::Scalar:
      return absl::StrCat("\"", absl::CEscape(node.Scalar()), "\"");
    default:
      return "nothing";
  }
}

// Reads the values of one document; every error is prefixed with
// "<source>: document <k>: ".
class DocumentReader {
 public:
  explicit DocumentReader(std::string where) : where_(std::move(where)) {}

  const std::string& where() const { return where_; }

  absl::Status Error(absl::string_view key, absl::string_view message) const {
    return absl::InvalidArgumentError(absl::StrCat(where_, ": ", key, ": ", message));
  }
  absl::Status Got(absl::string_view key, absl::string_view want, const YAML::Node& node) const {
    return Error(key, absl::StrCat("must be ", want, ", got ", Describe(node)));
  }

  absl::StatusOr<std::string> String(const YAML::Node& node, absl::string_view key) const {
    if (!node.IsScalar() || node.Scalar().empty()) return Got(key, "a non-empty string", node);
    return node.Scalar();
  }

  // Digits, with underscores allowed between them (4_194_304), in [min, max].
  absl::StatusOr<int64_t> Integer(const YAML::Node& node, absl::string_view key, int64_t min,
                                  int64_t max, absl::string_view want) const {
    int64_t value;
    if (!node.IsScalar() ||
        !absl::SimpleAtoi(absl::StrReplaceAll(node.Scalar(), {{"_", ""}}), &value) || value < min ||
        value > max) {
      return Got(key, want, node);
    }
    return value;
  }

  absl::StatusOr<double> Number(const YAML::Node& node, absl::string_view key, double min,
                                double max, absl::string_view want) const {
    double value;
    if (!node.IsScalar() || !absl::SimpleAtod(node.Scalar(), &value) || !(value >= min) ||
        !(value <= max)) {
      return Got(key, want, node);
    }
    return value;
  }

  absl::StatusOr<bool> Bool(const YAML::Node& node, absl::string_view key) const {
    if (node.IsScalar() && node.Tag() == "?") {
      const std::string text = absl::AsciiStrToLower(node.Scalar());
      if (text == "true") return true;
      if (text == "false") return false;
    }
    return Got(key, "true or false", node);
  }

  absl::StatusOr<std::string> Choice(const YAML::Node& node, absl::string_view key,
                                     const Keys& choices) const {
    const std::string want = absl::StrCat("one of ", absl::StrJoin(choices, ", "));
    if (!node.IsScalar() || !Contains(choices, node.Scalar())) return Got(key, want, node);
    return node.Scalar();
  }

  // A list of non-empty strings, or one string of comma-separated ones.
  absl::StatusOr<std::vector<std::string>> Strings(const YAML::Node& node,
                                                   absl::string_view key) const {
    std::vector<std::string> values;
    if (node.IsScalar()) {
      for (absl::string_view part : absl::StrSplit(node.Scalar(), ',', absl::SkipWhitespace())) {
        values.emplace_back(absl::StripAsciiWhitespace(part));
      }
    } else if (node.IsSequence()) {
      for (size_t i = 0; i < node.size(); ++i) {
        LP_ASSIGN_OR_RETURN(std::string value, String(node[i], absl::StrCat(key, "[", i, "]")));
        values.push_back(std::move(value));
      }
    } else {
      return Got(key, "a list of strings", node);
    }
    if (values.empty()) return Got(key, "a non-empty list of strings", node);
    return values;
  }

  // A list of integers >= 0, or one string of comma-separated ones.
  absl::StatusOr<std::vector<int32_t>> Indices(const YAML::Node& node,
                                               absl::string_view key) const {
    std::vector<int32_t> values;
    constexpr absl::string_view kWant = "an integer >= 0";
    constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
    if (node.IsScalar()) {
      for (absl::string_view part : absl::StrSplit(node.Scalar(), ',', absl::SkipWhitespace())) {
        int64_t value;
        if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &value) || value < 0 ||
            value > kMax) {
          return Got(key, "a list of integers >= 0", node);
        }
        values.push_back(static_cast<int32_t>(value));
      }
    } else if (node.IsSequence()) {
      for (size_t i = 0; i < node.size(); ++i) {
        LP_ASSIGN_OR_RETURN(int64_t value,
                            Integer(node[i], absl::StrCat(key, "[", i, "]"), 0, kMax, kWant));
        values.push_back(static_cast<int32_t>(value));
      }
    } else {
      return Got(key, "a list of integers >= 0", node);
    }
    if (values.empty()) return Got(key, "a non-empty list of integers >= 0", node);
    return values;
  }

 private:
  std::string where_;
};

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

absl::Status ParseExpand(const DocumentReader& reader, const YAML::Node& doc, v1::ExpandJob* job) {
  if (!Present(doc["model"])) return reader.Error("model", "is required (the input checkpoint)");
  if (!Present(doc["out"])) return reader.Error("out", "is required (the output directory)");
  LP_ASSIGN_OR_RETURN(*job->mutable_model(), reader.String(doc["model"], "model"));
  LP_ASSIGN_OR_RETURN(*job->mutable_out(), reader.String(doc["out"], "out"));
  if (Present(doc["add_blocks"])) {
    LP_ASSIGN_OR_RETURN(int64_t n, reader.Integer(doc["add_blocks"], "add_blocks", 0, kInt32Max,
                                                  "an integer >= 0"));
    job->set_add_blocks(static_cast<int32_t>(n));
  }
  if (Present(doc["groups"])) {
    LP_ASSIGN_OR_RETURN(int64_t n,
                        reader.Integer(doc["groups"], "groups", 0, kInt32Max, "an integer >= 0"));
    job->set_groups(static_cast<int32_t>(n));
  }
  const bool has_positions = Present(doc["positions"]);
  if (Present(doc["layout"])) {
    LP_ASSIGN_OR_RETURN(
        *job->mutable_layout(),
        reader.Choice(doc["layout"], "layout", {"interleaved", "top", "bottom", "positions"}));
  } else {
    // `positions` alone says which layout is meant.
    job->set_layout(has_positions ? "positions" : "interleaved");
  }
  if (has_positions) {
    if (job->layout() != "positions") {
      return reader.Error("positions",
                          absl::StrCat("goes with layout positions, not ", job->layout()));
    }
    LP_ASSIGN_OR_RETURN(std::vector<int32_t> positions,
                        reader.Indices(doc["positions"], "positions"));
    job->mutable_positions()->Add(positions.begin(), positions.end());
  } else if (job->layout() == "positions") {
    return reader.Error("positions", "is required with layout positions");
  }
  job->set_dtype("keep");
  if (Present(doc["dtype"])) {
    LP_ASSIGN_OR_RETURN(*job->mutable_dtype(),
                        reader.Choice(doc["dtype"], "dtype", {"keep", "f32", "bf16", "f16"}));
  }
  if (Present(doc["verify"])) {
    LP_ASSIGN_OR_RETURN(bool verify, reader.Bool(doc["verify"], "verify"));
    job->set_verify(verify);
  }
  if (Present(doc["force"])) {
    LP_ASSIGN_OR_RETURN(bool force, reader.Bool(doc["force"], "force"));
    job->set_force(force);
  }
  return absl::OkStatus();
}

absl::Status ParseEval(const DocumentReader& reader, const YAML::Node& doc, v1::EvalJob* job) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  if (!Present(doc["model"])) return reader.Error("model", "is required (the checkpoint)");
  LP_ASSIGN_OR_RETURN(*job->mutable_model(), reader.String(doc["model"], "model"));
  job->set_task("ppl");
  if (Present(doc["task"])) {
    LP_ASSIGN_OR_RETURN(
        *job->mutable_task(),
        reader.Choice(doc["task"], "task", {"ppl", "choice", "generate", "code", "shift"}));
  }
  const std::string& task = job->task();
  // Which keys each task takes; the others are refused so a typo is not ignored.
  const std::map<std::string, std::vector<std::string>> required = {{"ppl", {"corpora"}},
                                                                    {"choice", {"tasks"}},
                                                                    {"generate", {"prompts"}},
                                                                    {"code", {"tasks"}},
                                                                    {"shift", {"prompts", "base"}}};
  const std::map<std::string, std::vector<std::string>> allowed = {
      {"ppl", {"corpora", "seq_len", "windows"}},
      {"choice", {"tasks", "fewshot", "shots", "seed", "limit", "results"}},
      {"generate",
       {"prompts", "max_tokens", "temperature", "top_p", "stop", "seed", "limit", "results"}},
      {"code",
       {"tasks", "max_tokens", "temperature", "top_p", "stop", "seed", "samples", "timeout",
        "limit", "results"}},
      {"shift", {"prompts", "base", "max_tokens", "limit", "results"}}};
  for (const std::string& key : required.at(task)) {
    if (!Present(doc[key])) return reader.Error(key, absl::StrCat("is required for task ", task));
  }
  const std::vector<std::string>& keys = allowed.at(task);
  for (const auto& key : KindKeys(v1::JOB_KIND_EVAL)) {
    if (key == "model" || key == "task" || !Present(doc[std::string(key)])) continue;
    if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
      return reader.Error(key, absl::StrCat("does not apply to task ", task, " (it takes ",
                                            absl::StrJoin(keys, ", "), ")"));
    }
  }
  if (Present(doc["corpora"])) {
    LP_ASSIGN_OR_RETURN(std::vector<std::string> corpora,
                        reader.Strings(doc["corpora"], "corpora"));
    for (std::string& corpus : corpora) job->add_corpora(std::move(corpus));
  }
  if (task == "ppl") job->set_seq_len(2048);
  if (Present(doc["seq_len"])) {
    LP_ASSIGN_OR_RETURN(int64_t n,
                        reader.Integer(doc["seq_len"], "seq_len", 1, kMax, "an integer >= 1"));
    job->set_seq_len(n);
  }
  if (Present(doc["windows"])) {
    LP_ASSIGN_OR_RETURN(int64_t n,
                        reader.Integer(doc["windows"], "windows", 0, kMax, "an integer >= 0"));
    job->set_windows(n);
  }
  for (const auto& [key, field] :
       std::vector<std::pair<std::string, std::string*>>{{"tasks", job->mutable_tasks()},
                                                         {"fewshot", job->mutable_fewshot()},
                                                         {"prompts", job->mutable_prompts()},
                                                         {"base", job->mutable_base()},
                                                         {"results", job->mutable_results()}}) {
    if (Present(doc[key])) {
      LP_ASSIGN_OR_RETURN(*field, reader.String(doc[key], key));
    }
  }
  if (Present(doc["shots"])) {
    LP_ASSIGN_OR_RETURN(int64_t n,
                        reader.Integer(doc["shots"], "shots", 0, 1000, "an integer in [0, 1000]"));
    job->set_shots(static_cast<int32_t>(n));
  }
  job->set_seed(task == "choice" ? 1234 : 0);
  if (Present(doc["seed"])) {
    LP_ASSIGN_OR_RETURN(int64_t n,
                        reader.Integer(doc["seed"], "seed", 0, kMax, "a non-negative integer"));
    job->set_seed(static_cast<uint64_t>(n));
  }
  if (Present(doc["max_tokens"])) {
    LP_ASSIGN_OR_RETURN(int64_t n, reader.Integer(doc["max_tokens"], "max_tokens", 1, 1 << 20,
                                                  "an integer in [1, 1048576]"));
    job->set_max_tokens(n);
  }
  if (Present(doc["temperature"])) {
    LP_ASSIGN_OR_RETURN(double t, reader.Number(doc["temperature"], "temperature", 0, 100,
                                                "a number in [0, 100] (0: greedy)"));
    job->set_temperature(t);
  }
  job->set_top_p(1);
  if (Present(doc["top_p"])) {
    LP_ASSIGN_OR_RETURN(double p,
                        reader.Number(doc["top_p"], "top_p", 1e-9, 1, "a number in (0, 1]"));
    job->set_top_p(p);
  }
  if (Present(doc["stop"])) {
    LP_ASSIGN_OR_RETURN(std::vector<std::string> stops, reader.Strings(doc["stop"], "stop"));
    for (std::string& stop : stops) job->add_stop(std::move(stop));
  }
  job->set_samples(1);
  if (Present(doc["samples"])) {
    LP_ASSIGN_OR_RETURN(
        int64_t n, reader.Integer(doc["samples"], "samples", 1, 1000, "an integer in [1, 1000]"));
    job->set_samples(static_cast<int32_t>(n));
  }
  if (task == "code") job->set_timeout(10);
  if (Present(doc["timeout"])) {
    LP_ASSIGN_OR_RETURN(
        double t, reader.Number(doc["timeout"], "timeout", 0.1, 3600, "seconds in [0.1, 3600]"));
    job->set_timeout(t);
  }
  if (Present(doc["limit"])) {
    LP_ASSIGN_OR_RETURN(int64_t n,
                        reader.Integer(doc["limit"], "limit", 0, kMax, "an integer >= 0 (0: all)"));
    job->set_limit(n);
  }
  return absl::OkStatus();
}

absl::Status ParseIngest(const DocumentReader& reader, const YAML::Node& doc, v1::IngestJob* job) {
  if (!Present(doc["corpus"])) return reader.Error("corpus", "is required (the corpus name)");
  if (!Present(doc["tokenizer"])) {
    return reader.Error("tokenizer", "is required (tokenizer.model or a checkpoint directory)");
  }
  if (!Present(doc["inputs"])) return reader.Error("inputs", "is required (the files to ingest)");
  LP_ASSIGN_OR_RETURN(*job->mutable_corpus(), reader.String(doc["corpus"], "corpus"));
  LP_ASSIGN_OR_RETURN(*job->mutable_tokenizer(), reader.String(doc["tokenizer"], "tokenizer"));
  LP_ASSIGN_OR_RETURN(std::vector<std::string> inputs, reader.Strings(doc["inputs"], "inputs"));
  for (std::string& input : inputs) job->add_inputs(std::move(input));
  job->set_format("auto");
  if (Present(doc["format"])) {
    LP_ASSIGN_OR_RETURN(*job->mutable_format(),
                        reader.Choice(doc["format"], "format", {"auto", "txt", "jsonl"}));
  }
  job->set_text_field("text");
  if (Present(doc["text_field"])) {
    LP_ASSIGN_OR_RETURN(*job->mutable_text_field(), reader.String(doc["text_field"], "text_field"));
  }
  if (Present(doc["split_lines"])) {
    LP_ASSIGN_OR_RETURN(bool split, reader.Bool(doc["split_lines"], "split_lines"));
    job->set_split_lines(split);
  }
  job->set_held_out(0.005);
  if (Present(doc["held_out"])) {
    LP_ASSIGN_OR_RETURN(double held_out, reader.Number(doc["held_out"], "held_out", 0.0, 0.999,
                                                       "a number in [0, 0.999]"));
    job->set_held_out(held_out);
  }
  if (Present(doc["sft_format"])) {
    LP_ASSIGN_OR_RETURN(*job->mutable_sft_format(),
                        reader.Choice(doc["sft_format"], "sft_format", {"sharegpt", "alpaca"}));
    job->set_chat_template("llama2-chat");
  }
  if (Present(doc["chat_template"])) {
    if (job->sft_format().empty()) {
      return reader.Error("chat_template", "goes with sft_format (instruction data)");
    }
    LP_ASSIGN_OR_RETURN(
        *job->mutable_chat_template(),
        reader.Choice(doc["chat_template"], "chat_template", {"llama2-chat", "alpaca", "plain"}));
  }
  return absl::OkStatus();
}

absl::StatusOr<SubmitDocument> ParseDocument(const DocumentReader& reader, const YAML::Node& doc,
                                             int index) {
  if (!doc.IsMap()) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.where(), ": must be a map of keys (kind, name, ...), got ", Describe(doc)));
  }
  SubmitDocument result;
  result.document = index;
  v1::JobSpec* spec = result.request.mutable_spec();

  if (!Present(doc["kind"])) {
    return reader.Error("kind", "is required: one of expand, pretrain, sft, eval, ingest");
  }
  const YAML::Node kind_node = doc["kind"];
  const v1::JobKind kind =
      kind_node.IsScalar() ? ParseJobKind(kind_node.Scalar()) : v1::JOB_KIND_UNSPECIFIED;
  if (kind == v1::JOB_KIND_UNSPECIFIED) {
    return reader.Got("kind", "one of expand, pretrain, sft, eval, ingest", kind_node);
  }
  spec->set_kind(kind);
  const bool training = kind == v1::JOB_KIND_PRETRAIN || kind == v1::JOB_KIND_SFT;

  // Keys: distinct; for the kinds with a fixed schema, known.
  absl::flat_hash_set<std::string> seen;
  YAML::Node train_config(YAML::NodeType::Map);
  for (const auto& entry : doc) {
    if (!entry.first.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(reader.where(), ": keys must be plain words"));
    }
    const std::string& key = entry.first.Scalar();
    if (!seen.insert(key).second) return reader.Error(key, "duplicate key");
    if (Contains(SubmitKeys(), key)) continue;
    if (training) {
      // force_insert keeps the order (and anything odd for the config's own
      // validation to report).
      train_config.force_insert(entry.first, entry.second);
    } else if (!Contains(KindKeys(kind), key)) {
      return reader.Error(
          key, absl::StrCat("unknown key for kind ", rpc::JobKindName(kind), " (it takes ",
                            absl::StrJoin(KindKeys(kind), ", "), "; every kind takes ",
                            absl::StrJoin(SubmitKeys(), ", "), ")"));
    }
  }

  if (Present(doc["name"])) {
    LP_ASSIGN_OR_RETURN(*spec->mutable_name(), reader.String(doc["name"], "name"));
  }
  spec->set_world_size(1);
  if (Present(doc["world_size"])) {
    LP_ASSIGN_OR_RETURN(int64_t n, reader.Integer(doc["world_size"], "world_size", 1, kInt32Max,
                                                  "an integer >= 1"));
    if (!training && n != 1) {
      return reader.Error("world_size", absl::StrCat("a job of kind ", rpc::JobKindName(kind),
                                                     " runs on one worker; must be 1"));
    }
    spec->set_world_size(static_cast<int32_t>(n));
  } else if (training && Present(doc["parallel"]) && doc["parallel"].IsMap() &&
             Present(doc["parallel"]["dp"])) {
    // parallel: {dp, tp} names the mesh: world_size = dp x tp.
    LP_ASSIGN_OR_RETURN(int64_t dp, reader.Integer(doc["parallel"]["dp"], "parallel.dp", 1,
                                                   kInt32Max, "an integer >= 1"));
    int64_t tp = 1;
    if (Present(doc["parallel"]["tp"])) {
      LP_ASSIGN_OR_RETURN(tp, reader.Integer(doc["parallel"]["tp"], "parallel.tp", 1, kInt32Max,
                                             "an integer >= 1"));
    }
    if (dp * tp > kInt32Max) return reader.Error("parallel", "dp x tp is too large");
    spec->set_world_size(static_cast<int32_t>(dp * tp));
  }
  if (Present(doc["resume"])) {
    if (!training) {
      return reader.Error("resume", absl::StrCat("only pretrain and sft jobs resume a run, not ",
                                                 rpc::JobKindName(kind)));
    }
    LP_ASSIGN_OR_RETURN(bool resume, reader.Bool(doc["resume"], "resume"));
    spec->set_resume(resume);
  }
  if (Present(doc["max_restarts"])) {
    LP_ASSIGN_OR_RETURN(int64_t n, reader.Integer(doc["max_restarts"], "max_restarts", 0, kInt32Max,
                                                  "an integer >= 0"));
    spec->set_max_restarts(static_cast<int32_t>(n));
  }
  if (Present(doc["depends_on"])) {
    LP_ASSIGN_OR_RETURN(std::vector<std::string> depends_on,
                        reader.Strings(doc["depends_on"], "depends_on"));
    for (std::string& dependency : depends_on) spec->add_depends_on(std::move(dependency));
  }

  switch (kind) {
    case v1::JOB_KIND_EXPAND:
      LP_RETURN_IF_ERROR(ParseExpand(reader, doc, spec->mutable_expand()));
      break;
    case v1::JOB_KIND_EVAL:
      LP_RETURN_IF_ERROR(ParseEval(reader, doc, spec->mutable_eval()));
      break;
    case v1::JOB_KIND_INGEST:
      LP_RETURN_IF_ERROR(ParseIngest(reader, doc, spec->mutable_ingest()));
      break;
    default: {
      YAML::Emitter emitter;
      emitter << train_config;
      if (!emitter.good()) {
        return absl::InternalError(
            absl::StrCat(reader.where(), ": re-emitting the job config: ", emitter.GetLastError()));
      }
      std::string yaml = absl::StrCat(emitter.c_str(), "\n");
      // The same validation `llamaproctl train` applies, paths kept as
      // written (the coordinator resolves them against its data dir).
      LP_RETURN_IF_ERROR(ParseJobConfig(yaml, reader.where()).status());
      spec->set_train_config_yaml(std::move(yaml));
      break;
    }
  }
  return result;
}

}  // namespace

v1::JobKind ParseJobKind(absl::string_view name) {
  for (v1::JobKind kind : {v1::JOB_KIND_EXPAND, v1::JOB_KIND_PRETRAIN, v1::JOB_KIND_SFT,
                           v1::JOB_KIND_EVAL, v1::JOB_KIND_INGEST}) {
    if (rpc::JobKindName(kind) == name) return kind;
  }
  return v1::JOB_KIND_UNSPECIFIED;
}

absl::StatusOr<std::vector<SubmitDocument>> ParseSubmitFile(absl::string_view yaml_text,
                                                            absl::string_view source) {
  std::vector<YAML::Node> nodes;
  try {
    nodes = YAML::LoadAll(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    if (!e.mark.is_null()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ":", e.mark.line + 1, ":",
                                                     e.mark.column + 1, ": invalid YAML: ", e.msg));
    }
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid YAML: ", e.msg));
  }

  std::vector<SubmitDocument> documents;
  std::vector<DocumentReader> readers;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!Present(nodes[i])) continue;
    const int index = static_cast<int>(i) + 1;
    DocumentReader reader(absl::StrCat(source, ": document ", index));
    try {
      LP_ASSIGN_OR_RETURN(SubmitDocument document, ParseDocument(reader, nodes[i], index));
      documents.push_back(std::move(document));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(reader.where(), ": ", e.what()));
    }
    readers.push_back(std::move(reader));
  }
  if (documents.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": no job documents (each needs at least `kind`)"));
  }

  // Names: distinct, so that depends_on can refer to them.
  absl::flat_hash_map<std::string, int> by_name;
  for (size_t i = 0; i < documents.size(); ++i) {
    const std::string& name = documents[i].request.spec().name();
    if (name.empty()) continue;
    auto [it, inserted] = by_name.emplace(name, static_cast<int>(i));
    if (!inserted) {
      return readers[i].Error("name",
                              absl::StrCat("\"", name, "\" is already the name of document ",
                                           documents[it->second].document));
    }
  }
  for (size_t i = 0; i < documents.size(); ++i) {
    SubmitDocument& document = documents[i];
    for (const std::string& dependency : document.request.spec().depends_on()) {
      auto it = by_name.find(dependency);
      if (it == by_name.end()) {
        document.depends_on_documents.push_back(-1);  // A job id.
        continue;
      }
      const int target = it->second;
      if (target == static_cast<int>(i)) {
        return readers[i].Error("depends_on",
                                absl::StrCat("\"", dependency, "\" is this document's own name"));
      }
      if (target > static_cast<int>(i)) {
        return readers[i].Error(
            "depends_on",
            absl::StrCat("\"", dependency, "\" names document ", documents[target].document,
                         ", which comes later: a job can depend only on earlier "
                         "documents (they are submitted in order)"));
      }
      document.depends_on_documents.push_back(target);
    }
  }
  return documents;
}

absl::StatusOr<std::vector<SubmitDocument>> LoadSubmitFile(const std::string& path) {
  LP_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseSubmitFile(text, path);
}

v1::SubmitJobRequest ResolveDependencies(const SubmitDocument& document,
                                         absl::Span<const std::string> job_ids) {
  v1::SubmitJobRequest request = document.request;
  LP_CHECK(document.depends_on_documents.size() ==
           static_cast<size_t>(request.spec().depends_on_size()));
  for (size_t i = 0; i < document.depends_on_documents.size(); ++i) {
    const int target = document.depends_on_documents[i];
    if (target < 0) continue;
    LP_CHECK(static_cast<size_t>(target) < job_ids.size(), "no job id for a named dependency");
    *request.mutable_spec()->mutable_depends_on(static_cast<int>(i)) = job_ids[target];
  }
  return request;
}

std::string NewRequestId() {
  std::random_device entropy;  // /dev/urandom (or the CPU's RNG) on Linux.
  uint8_t bytes[16];
  for (int i = 0; i < 16; i += 4) {
    const uint32_t word = entropy();
    std::memcpy(bytes + i, &word, 4);
  }
  bytes[6] = static_cast<uint8_t>((bytes[6] & 0x0f) | 0x40);  // Version 4.
  bytes[8] = static_cast<uint8_t>((bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant.
  std::string text;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) text += '-';
    absl::StrAppendFormat(&text, "%02x", bytes[i]);
  }
  return text;
}

}  // namespace llamapro::client
