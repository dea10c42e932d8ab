// Reading ingestion inputs: plain text, JSON lines, each optionally gzip- or
// zstd-compressed (the formats the Stack and Proof-pile-2 ship in), as a
// stream of records with their line numbers. Memory stays at one record plus
// fixed buffers, whatever the file size (a whole-file text document is one
// record).
#ifndef LLAMAPRO_DATA_READERS_H_
#define LLAMAPRO_DATA_READERS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace llamapro {

enum class InputFormat { kAuto, kText, kJsonl };
absl::StatusOr<InputFormat> ParseInputFormat(absl::string_view name);  // auto | txt | jsonl
// kAuto resolved from the name: *.jsonl[.gz|.zst] -> kJsonl, anything else -> kText.
InputFormat ResolveInputFormat(InputFormat format, absl::string_view path);

struct InputOptions {
  InputFormat format = InputFormat::kAuto;
  std::string text_field = "text";  // JSONL: the field holding a document's text.
  bool split_lines = false;         // Text: one document per non-empty line.
  bool keep_json = false;           // JSONL: hand out the parsed record (SFT), not a field.
};

struct InputRecord {
  uint64_t number = 0;  // 1-based line number (text without split_lines: 1).
  std::string text;     // The document's text.
  nlohmann::json json;  // With keep_json: the parsed object.
  uint64_t bytes = 0;   // Size of the record in the (decompressed) input.
  std::string error;    // Non-empty when malformed: what is wrong.
  bool empty = false;   // A blank line or an empty text.
};

// Not thread-safe.
class InputReader {
 public:
  static absl::StatusOr<std::unique_ptr<InputReader>> Open(const std::string& path,
                                                           const InputOptions& options);
  virtual ~InputReader() = default;
  // The next record; false at the end. Errors are for the file as a whole
  // (I/O, corrupt compression), not malformed records.
  virtual absl::StatusOr<bool> Next(InputRecord* record) = 0;
  // Bytes of the file consumed so far (compressed bytes for .gz/.zst).
  virtual uint64_t bytes_consumed() const = 0;
};

// True when `text` is valid UTF-8; otherwise `*error_offset` is the first bad byte.
bool IsValidUtf8(absl::string_view text, size_t* error_offset);

}  // namespace llamapro

#endif  // LLAMAPRO_DATA_READERS_H_
