#include "model/lineage.h"

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr char kFormat[] = "llamapro.expansion";
constexpr int kVersion = 1;

absl::Status RecordError(absl::string_view source, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": ", message));
}

absl::StatusOr<std::vector<int64_t>> IntList(const OrderedJson& json, const char* field,
                                             absl::string_view source) {
  if (!json.contains(field) || !json[field].is_array()) {
    return RecordError(source, absl::StrCat("'", field, "' must be a list of integers"));
  }
  std::vector<int64_t> out;
  for (const OrderedJson& v : json[field]) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      return RecordError(
          source, absl::StrCat("'", field, "' holds ", v.dump(), ", not a non-negative integer"));
    }
    out.push_back(v.get<int64_t>());
  }
  return out;
}

}  // namespace

std::vector<int64_t> ExpansionRecord::NewBlocks() const {
  std::vector<int64_t> out;
  if (lineage.empty()) return out;
  const int64_t latest = lineage.back().stage;
  for (int64_t i = 0; i < NumLayers(); ++i) {
    if (block_stage[i] == latest) out.push_back(i);
  }
  return out;
}

absl::StatusOr<ExpansionRecord> ParseExpansionRecord(absl::string_view text,
                                                     absl::string_view source) {
  OrderedJson json;
  try {
    json = OrderedJson::parse(text);
  } catch (const OrderedJson::exception& e) {
    return RecordError(source, absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!json.is_object() || json.value("format", "") != kFormat) {
    return RecordError(
        source,
        absl::StrCat("not a llamapro expansion record (\"format\" must be \"", kFormat, "\")"));
  }
  if (json.value("version", 0) != kVersion) {
    return RecordError(source, absl::StrCat("unsupported version ", json.value("version", 0),
                                            " (this build reads version ", kVersion, ")"));
  }
  ExpansionRecord record;
  LP_ASSIGN_OR_RETURN(record.block_stage, IntList(json, "block_stage", source));
  if (!json.contains("lineage") || !json["lineage"].is_array()) {
    return RecordError(source, "'lineage' must be a list");
  }
  for (const OrderedJson& entry : json["lineage"]) {
    if (!entry.is_object()) return RecordError(source, "a 'lineage' entry is not an object");
    ExpansionStage stage;
    stage.stage = entry.value("stage", int64_t{0});
    stage.source_layers = entry.value("source_num_hidden_layers", int64_t{0});
    stage.target_layers = entry.value("num_hidden_layers", int64_t{0});
    stage.layout = entry.value("layout", "");
    stage.groups = entry.value("groups", int64_t{0});
    LP_ASSIGN_OR_RETURN(stage.new_blocks, IntList(entry, "new_blocks", source));
    LP_ASSIGN_OR_RETURN(stage.copied_from, IntList(entry, "copied_from", source));
    stage.source_model = entry.value("source_model", "");
    stage.created_at = entry.value("created_at", "");
    stage.llamapro_version = entry.value("llamapro_version", "");
    if (stage.stage != static_cast<int64_t>(record.lineage.size()) + 1 ||
        stage.new_blocks.size() != stage.copied_from.size() ||
        stage.target_layers <= stage.source_layers) {
      return RecordError(
          source, absl::StrCat("lineage entry ", record.lineage.size() + 1, " is inconsistent"));
    }
    record.lineage.push_back(std::move(stage));
  }
  const int64_t stages = static_cast<int64_t>(record.lineage.size());
  for (int64_t s : record.block_stage) {
    if (s > stages) {
      return RecordError(
          source, absl::StrCat("block_stage names stage ", s, " but the lineage has ", stages));
    }
  }
  if (!record.lineage.empty() && record.lineage.back().target_layers != record.NumLayers()) {
    return RecordError(source,
                       "the last lineage entry's num_hidden_layers differs from block_stage");
  }
  return record;
}

absl::StatusOr<std::optional<ExpansionRecord>> LoadExpansionRecord(const std::string& dir,
                                                                   int64_t num_layers) {
  const std::string path = JoinPath(dir, kExpansionFile);
  if (!PathExists(path)) return std::optional<ExpansionRecord>();
  LP_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  LP_ASSIGN_OR_RETURN(ExpansionRecord record, ParseExpansionRecord(text, path));
  if (record.NumLayers() != num_layers) {
    return RecordError(path, absl::StrCat("describes ", record.NumLayers(),
                                          " blocks but config.json has num_hidden_layers=",
                                          num_layers, " (stale record?)"));
  }
  return std::optional<ExpansionRecord>(std::move(record));
}

std::string SerializeExpansionRecord(const ExpansionRecord& record) {
  OrderedJson json;
  json["format"] = kFormat;
  json["version"] = kVersion;
  json["num_hidden_layers"] = record.NumLayers();
  json["new_blocks"] = record.NewBlocks();
  json["block_stage"] = record.block_stage;
  OrderedJson lineage = OrderedJson::array();
  for (const ExpansionStage& s : record.lineage) {
    OrderedJson entry;
    entry["stage"] = s.stage;
    entry["source_num_hidden_layers"] = s.source_layers;
    entry["num_hidden_layers"] = s.target_layers;
    entry["layout"] = s.layout;
    entry["groups"] = s.groups;
    entry["new_blocks"] = s.new_blocks;
    entry["copied_from"] = s.copied_from;
    entry["source_model"] = s.source_model;
    entry["created_at"] = s.created_at;
    entry["llamapro_version"] = s.llamapro_version;
    lineage.push_back(std::move(entry));
  }
  json["lineage"] = std::move(lineage);
  return json.dump(2) + "\n";
}

}  // namespace llamapro
