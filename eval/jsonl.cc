#include "eval/jsonl.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

absl::Status LineError(const std::string& path, const JsonLine& line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ":", line.line, ": ", what));
}

absl::StatusOr<const nlohmann::json*> Field(const std::string& path, const JsonLine& line,
                                            absl::string_view key) {
  auto it = line.value.find(std::string(key));
  if (it == line.value.end()) {
    return LineError(path, line, absl::StrCat("missing field \"", key, "\""));
  }
  return &*it;
}

}  // namespace

absl::StatusOr<std::vector<JsonLine>> ReadJsonLines(const std::string& path) {
  LP_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::vector<JsonLine> lines;
  int64_t number = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++number;
    absl::string_view stripped = absl::StripAsciiWhitespace(raw);
    if (stripped.empty()) continue;
    JsonLine line{.line = number, .value = {}};
    try {
      line.value = nlohmann::json::parse(stripped.begin(), stripped.end());
    } catch (const nlohmann::json::exception& e) {
      return LineError(path, line, absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!line.value.is_object()) {
      return LineError(path, line, absl::StrCat("not a JSON object: ", stripped.substr(0, 80)));
    }
    lines.push_back(std::move(line));
  }
  if (lines.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no JSON lines"));
  return lines;
}

absl::StatusOr<std::string> StringField(const std::string& path, const JsonLine& line,
                                        absl::string_view key) {
  LP_ASSIGN_OR_RETURN(const nlohmann::json* field, Field(path, line, key));
  if (!field->is_string()) {
    return LineError(path, line, absl::StrCat("\"", key, "\" must be a string"));
  }
  return field->get<std::string>();
}

absl::StatusOr<std::vector<std::string>> StringListField(const std::string& path,
                                                         const JsonLine& line,
                                                         absl::string_view key) {
  LP_ASSIGN_OR_RETURN(const nlohmann::json* field, Field(path, line, key));
  if (!field->is_array()) {
    return LineError(path, line, absl::StrCat("\"", key, "\" must be a list of strings"));
  }
  std::vector<std::string> out;
  for (const nlohmann::json& item : *field) {
    if (!item.is_string()) {
      return LineError(path, line, absl::StrCat("\"", key, "\" must be a list of strings"));
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

absl::StatusOr<int64_t> IntegerField(const std::string& path, const JsonLine& line,
                                     absl::string_view key) {
  LP_ASSIGN_OR_RETURN(const nlohmann::json* field, Field(path, line, key));
  if (!field->is_number_integer()) {
    return LineError(path, line, absl::StrCat("\"", key, "\" must be an integer"));
  }
  return field->get<int64_t>();
}

absl::Status WriteJsonFile(const std::string& path, const nlohmann::ordered_json& value) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) LP_RETURN_IF_ERROR(MakeDirs(parent.string()));
  return WriteFileAtomic(path, value.dump(2) + "\n");
}

}  // namespace llamapro
