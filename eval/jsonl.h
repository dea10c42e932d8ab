// JSON-lines task files of the evaluations: one JSON object per non-blank
// line. Errors name the file and the line.
#ifndef LLAMAPRO_EVAL_JSONL_H_
#define LLAMAPRO_EVAL_JSONL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace llamapro {

struct JsonLine {
  int64_t line = 0;  // 1-based, in the file.
  nlohmann::json value;
};

// Every object of `path`; a line that is not a JSON object is an error
// ("tasks.jsonl:7: not a JSON object: ..."). An empty file is an error.
absl::StatusOr<std::vector<JsonLine>> ReadJsonLines(const std::string& path);

// Field access with errors that name file:line and the field.
absl::StatusOr<std::string> StringField(const std::string& path, const JsonLine& line,
                                        absl::string_view key);
absl::StatusOr<std::vector<std::string>> StringListField(const std::string& path,
                                                         const JsonLine& line,
                                                         absl::string_view key);
absl::StatusOr<int64_t> IntegerField(const std::string& path, const JsonLine& line,
                                     absl::string_view key);

// Writes `value` to `path` (indented) atomically, creating parent directories.
absl::Status WriteJsonFile(const std::string& path, const nlohmann::ordered_json& value);

}  // namespace llamapro

#endif  // LLAMAPRO_EVAL_JSONL_H_
