#include "data/readers.h"

#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status_macros.h"

namespace llamapro {
namespace {

constexpr size_t kChunk = 1 << 20;

// Decompressed bytes of a file.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  // Up to `n` bytes; 0 at the end.
  virtual absl::StatusOr<size_t> Read(char* buffer, size_t n) = 0;
  virtual uint64_t consumed() const = 0;
};

class PlainSource : public ByteSource {
 public:
  explicit PlainSource(File file, uint64_t size) : file_(std::move(file)), size_(size) {}
  absl::StatusOr<size_t> Read(char* buffer, size_t n) override {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(n, size_ - offset_));
    if (take == 0) return 0;
    LP_RETURN_IF_ERROR(file_.PRead(buffer, take, offset_));
    offset_ += take;
    return take;
  }
  uint64_t consumed() const override { return offset_; }

 private:
  File file_;
  uint64_t size_;
  uint64_t offset_ = 0;
};

// Compressed input read in chunks from a file.
class CompressedInput {
 public:
  CompressedInput(File file, uint64_t size)
      : file_(std::move(file)), size_(size), buffer_(kChunk) {}
  // Refills when everything was consumed; false at the end of the file.
  absl::StatusOr<bool> Fill() {
    if (pos_ < end_) return true;
    const size_t take = static_cast<size_t>(std::min<uint64_t>(buffer_.size(), size_ - offset_));
    if (take == 0) return false;
    LP_RETURN_IF_ERROR(file_.PRead(buffer_.data(), take, offset_));
    offset_ += take;
    pos_ = 0;
    end_ = take;
    return true;
  }
  const char* data() const { return buffer_.data() + pos_; }
  size_t available() const { return end_ - pos_; }
  void Consume(size_t n) { pos_ += n; }
  const std::string& path() const { return file_.path(); }
  uint64_t offset() const { return offset_; }

 private:
  File file_;
  uint64_t size_;
  std::vector<char> buffer_;
  uint64_t offset_ = 0;
  size_t pos_ = 0;
  size_t end_ = 0;
};

class GzipSource : public ByteSource {
 public:
  GzipSource(File file, uint64_t size) : in_(std::move(file), size) {
    std::memset(&stream_, 0, sizeof stream_);
    ok_ = inflateInit2(&stream_, 16 + MAX_WBITS) == Z_OK;  // 16: gzip framing.
  }
  ~GzipSource() override { inflateEnd(&stream_); }

  absl::StatusOr<size_t> Read(char* buffer, size_t n) override {
    if (!ok_) return absl::InternalError("zlib initialisation failed");
    size_t produced = 0;
    while (produced == 0 && !done_) {
      LP_ASSIGN_OR_RETURN(bool more, in_.Fill());
      if (!more) {
        if (!at_member_end_) {
          return absl::DataLossError(
              absl::StrCat(in_.path(), ": gzip stream ends early (truncated file?)"));
        }
        done_ = true;
        break;
      }
      const size_t available = in_.available();
      stream_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in_.data()));
      stream_.avail_in = static_cast<uInt>(available);
      stream_.next_out = reinterpret_cast<Bytef*>(buffer);
      stream_.avail_out = static_cast<uInt>(n);
      const int rc = inflate(&stream_, Z_NO_FLUSH);
      in_.Consume(available - stream_.avail_in);
      produced = n - stream_.avail_out;
      if (rc == Z_STREAM_END) {
        at_member_end_ = true;
        inflateReset(&stream_);  // Concatenated gzip members continue the stream.
      } else if (rc == Z_OK || rc == Z_BUF_ERROR) {
        if (produced > 0 || stream_.avail_in == 0) at_member_end_ = false;
      } else {
        return absl::DataLossError(absl::StrCat(in_.path(), ": corrupt gzip data near byte ",
                                                in_.offset(), ": ",
                                                stream_.msg != nullptr ? stream_.msg : "?"));
      }
    }
    return produced;
  }
  uint64_t consumed() const override { return in_.offset(); }

 private:
  CompressedInput in_;
  z_stream stream_;
  bool ok_ = false;
  bool done_ = false;
  bool at_member_end_ = true;  // An empty file is an empty stream.
};

class ZstdSource : public ByteSource {
 public:
  ZstdSource(File file, uint64_t size)
      : in_(std::move(file), size), stream_(ZSTD_createDStream()) {}
  ~ZstdSource() override { ZSTD_freeDStream(stream_); }

  absl::StatusOr<size_t> Read(char* buffer, size_t n) override {
    size_t produced = 0;
    while (produced == 0 && !done_) {
      LP_ASSIGN_OR_RETURN(bool more, in_.Fill());
      if (!more) {
        if (last_hint_ != 0) {
          return absl::DataLossError(
              absl::StrCat(in_.path(), ": zstd stream ends early (truncated file?)"));
        }
        done_ = true;
        break;
      }
      ZSTD_inBuffer input{in_.data(), in_.available(), 0};
      ZSTD_outBuffer output{buffer, n, 0};
      const size_t rc = ZSTD_decompressStream(stream_, &output, &input);
      if (ZSTD_isError(rc)) {
        return absl::DataLossError(absl::StrCat(in_.path(), ": corrupt zstd data near byte ",
                                                in_.offset(), ": ", ZSTD_getErrorName(rc)));
      }
      in_.Consume(input.pos);
      produced = output.pos;
      last_hint_ = rc;  // 0: a frame just ended.
    }
    return produced;
  }
  uint64_t consumed() const override { return in_.offset(); }

 private:
  CompressedInput in_;
  ZSTD_DStream* stream_;
  bool done_ = false;
  size_t last_hint_ = 0;
};

class LineSplitter {
 public:
  explicit LineSplitter(std::unique_ptr<ByteSource> source)
      : source_(std::move(source)), buffer_(kChunk) {}
  // The next line without its terminator ("\n" or "\r\n"); false at the end.
  absl::StatusOr<bool> Next(std::string* line) {
    line->clear();
    while (true) {
      if (pos_ == end_) {
        if (eof_) return !line->empty();
        LP_ASSIGN_OR_RETURN(size_t got, source_->Read(buffer_.data(), buffer_.size()));
        pos_ = 0;
        end_ = got;
        if (got == 0) {
          eof_ = true;
          return !line->empty();  // A last line without a terminator.
        }
      }
      const char* start = buffer_.data() + pos_;
      const void* newline = std::memchr(start, '\n', end_ - pos_);
      if (newline == nullptr) {
        line->append(start, end_ - pos_);
        pos_ = end_;
        continue;
      }
      const size_t length = static_cast<const char*>(newline) - start;
      line->append(start, length);
      pos_ += length + 1;
      if (!line->empty() && line->back() == '\r') line->pop_back();
      return true;
    }
  }
  // Everything that remains.
  absl::Status ReadAll(std::string* out) {
    out->append(buffer_.data() + pos_, end_ - pos_);
    pos_ = end_;
    while (true) {
      LP_ASSIGN_OR_RETURN(size_t got, source_->Read(buffer_.data(), buffer_.size()));
      if (got == 0) return absl::OkStatus();
      out->append(buffer_.data(), got);
    }
  }
  uint64_t consumed() const { return source_->consumed(); }

 private:
  std::unique_ptr<ByteSource> source_;
  std::vector<char> buffer_;
  size_t pos_ = 0;
  size_t end_ = 0;
  bool eof_ = false;
};

absl::string_view JsonTypeName(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::null:
      return "null";
    case nlohmann::json::value_t::boolean:
      return "a boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned:
    case nlohmann::json::value_t::number_float:
      return "a number";
    case nlohmann::json::value_t::array:
      return "an array";
    case nlohmann::json::value_t::object:
      return "an object";
    case nlohmann::json::value_t::string:
      return "a string";
    default:
      return "an unknown value";
  }
}

class TextReader : public InputReader {
 public:
  TextReader(std::unique_ptr<ByteSource> source, bool split_lines)
      : lines_(std::move(source)), split_lines_(split_lines) {}

  absl::StatusOr<bool> Next(InputRecord* record) override {
    *record = InputRecord();
    if (!split_lines_) {
      if (done_) return false;
      done_ = true;
      record->number = 1;
      LP_RETURN_IF_ERROR(lines_.ReadAll(&record->text));
      record->bytes = record->text.size();
      Check(record);
      return true;
    }
    LP_ASSIGN_OR_RETURN(bool more, lines_.Next(&record->text));
    if (!more) return false;
    record->number = ++line_;
    record->bytes = record->text.size() + 1;
    Check(record);
    return true;
  }
  uint64_t bytes_consumed() const override { return lines_.consumed(); }

 private:
  static void Check(InputRecord* record) {
    size_t offset = 0;
    if (!IsValidUtf8(record->text, &offset)) {
      record->error = absl::StrCat("invalid UTF-8 at byte ", offset);
    } else if (record->text.find_first_not_of(" \t\r\n") == std::string::npos) {
      record->empty = true;
    }
  }
  LineSplitter lines_;
  bool split_lines_;
  bool done_ = false;
  uint64_t line_ = 0;
};

class JsonlReader : public InputReader {
 public:
  JsonlReader(std::unique_ptr<ByteSource> source, InputOptions options)
      : lines_(std::move(source)), options_(std::move(options)) {}

  absl::StatusOr<bool> Next(InputRecord* record) override {
    *record = InputRecord();
    std::string line;
    LP_ASSIGN_OR_RETURN(bool more, lines_.Next(&line));
    if (!more) return false;
    record->number = ++line_;
    record->bytes = line.size() + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) {
      record->empty = true;
      return true;
    }
    nlohmann::json json;
    try {
      json = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      // nlohmann reports invalid UTF-8 inside strings as a parse error too.
      std::string what = e.what();
      const size_t tag = what.find("] ");
      record->error =
          absl::StrCat("not valid JSON: ", tag == std::string::npos ? what : what.substr(tag + 2));
      return true;
    }
    if (!json.is_object()) {
      record->error = absl::StrCat("expected a JSON object, got ", JsonTypeName(json));
      return true;
    }
    if (options_.keep_json) {
      record->json = std::move(json);
      return true;
    }
    auto it = json.find(options_.text_field);
    if (it == json.end()) {
      record->error = absl::StrCat("missing field '", options_.text_field, "'");
    } else if (!it->is_string()) {
      record->error = absl::StrCat("field '", options_.text_field, "' is ", JsonTypeName(*it),
                                   ", expected a string");
    } else {
      record->text = it->get<std::string>();
      record->empty = record->text.empty();
    }
    return true;
  }
  uint64_t bytes_consumed() const override { return lines_.consumed(); }

 private:
  LineSplitter lines_;
  InputOptions options_;
  uint64_t line_ = 0;
};

}  // namespace

absl::StatusOr<InputFormat> ParseInputFormat(absl::string_view name) {
  if (name == "auto") return InputFormat::kAuto;
  if (name == "txt" || name == "text") return InputFormat::kText;
  if (name == "jsonl") return InputFormat::kJsonl;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown input format '", name, "'; choose auto, txt or jsonl"));
}

InputFormat ResolveInputFormat(InputFormat format, absl::string_view path) {
  if (format != InputFormat::kAuto) return format;
  for (absl::string_view suffix : {".jsonl", ".jsonl.gz", ".jsonl.zst", ".ndjson"}) {
    if (absl::EndsWith(path, suffix)) return InputFormat::kJsonl;
  }
  return InputFormat::kText;
}

absl::StatusOr<std::unique_ptr<InputReader>> InputReader::Open(const std::string& path,
                                                               const InputOptions& options) {
  LP_ASSIGN_OR_RETURN(File file, File::OpenForRead(path));
  LP_ASSIGN_OR_RETURN(uint64_t size, file.Size());
  std::unique_ptr<ByteSource> source;
  if (absl::EndsWith(path, ".gz")) {
    source = std::make_unique<GzipSource>(std::move(file), size);
  } else if (absl::EndsWith(path, ".zst")) {
    source = std::make_unique<ZstdSource>(std::move(file), size);
  } else {
    source = std::make_unique<PlainSource>(std::move(file), size);
  }
  if (ResolveInputFormat(options.format, path) == InputFormat::kJsonl) {
    return std::unique_ptr<InputReader>(new JsonlReader(std::move(source), options));
  }
  return std::unique_ptr<InputReader>(new TextReader(std::move(source), options.split_lines));
}

bool IsValidUtf8(absl::string_view text, size_t* error_offset) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    // Fast path over ASCII, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, s + i, 8);
      if ((word & 0x8080808080808080ull) != 0) break;
      i += 8;
    }
    if (i >= n) break;
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t min = 0;
    uint32_t code = 0;
    if ((c & 0xe0) == 0xc0) {
      length = 2, min = 0x80, code = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      length = 3, min = 0x800, code = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      length = 4, min = 0x10000, code = c & 0x07;
    } else {
      *error_offset = i;
      return false;
    }
    if (i + length > n) {
      *error_offset = i;
      return false;
    }
    for (size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xc0) != 0x80) {
        *error_offset = i;
        return false;
      }
      code = (code << 6) | (s[i + k] & 0x3f);
    }
    if (code < min || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) {
      *error_offset = i;  // Overlong, out of range, or a surrogate.
      return false;
    }
    i += length;
  }
  return true;
}

}  // namespace llamapro
