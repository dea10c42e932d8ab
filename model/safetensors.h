// The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON describing each tensor
// (dtype, shape, data_offsets relative to the data section) plus optional
// string metadata, then the tensor bytes.
//
// Parsing is strict, as the reference implementation is: data sections must be
// contiguous from offset 0 and end exactly at the end of the file, byte
// lengths must equal shape x dtype size, names must be unique. Every error
// names the file and, where there is one, the tensor.
#ifndef LLAMAPRO_MODEL_SAFETENSORS_H_
#define LLAMAPRO_MODEL_SAFETENSORS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/file.h"
#include "kernels/dtype.h"

namespace llamapro {

// Largest header we accept (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // Byte offsets relative to the start of the data section.
  uint64_t end = 0;

  int64_t NumElements() const;
  uint64_t NumBytes() const { return end - begin; }
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;        // N, the JSON length.
  uint64_t data_start = 0;          // 8 + N: file offset of the data section.
  std::vector<TensorInfo> tensors;  // Ordered by data offset.
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Parses and validates the header of a safetensors file whose total size is
// `file_size`. `prefix` holds the first bytes of the file: at least 8 + N of
// them, or the whole file if it is shorter. `file_name` only labels errors.
// Never reads past `prefix`; safe on arbitrary input (it is fuzzed).
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size,
                                                         absl::string_view file_name);

// A memory-mapped safetensors file. Thread-safe for concurrent reads.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  const std::string& path() const { return mapped_->path(); }
  const SafetensorsHeader& header() const { return header_; }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  // nullptr if absent.
  const TensorInfo* Find(absl::string_view name) const;
  // The tensor's bytes inside the mapping (valid while this object lives).
  const uint8_t* Data(const TensorInfo& info) const {
    return mapped_->data() + header_.data_start + info.begin;
  }
  uint64_t FileOffset(const TensorInfo& info) const { return header_.data_start + info.begin; }
  const MappedFile& mapped() const { return *mapped_; }

 private:
  SafetensorsFile() = default;
  std::unique_ptr<MappedFile> mapped_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, size_t> by_name_;
};

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  uint64_t NumBytes() const;
};

// The serialized header (length prefix, JSON, space padding to a multiple of
// 8 bytes) for tensors laid out contiguously in the given order.
std::string SerializeSafetensorsHeader(
    const std::vector<TensorSpec>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata);

// Writes one safetensors file by streaming tensor bytes in layout order.
// Not thread-safe. The file is complete only after Finish() returns OK; a
// writer destroyed earlier leaves a partial file that the caller removes
// (writers are used inside a StagingDir).
class SafetensorsWriter {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, std::vector<TensorSpec> tensors,
      const std::vector<std::pair<std::string, std::string>>& metadata);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  uint64_t data_bytes() const { return data_bytes_; }
  uint64_t data_written() const { return written_; }

  // Append tensor data; the total must come to data_bytes() exactly.
  absl::Status Append(const void* data, size_t n);
  absl::Status AppendZeros(uint64_t n);
  absl::Status AppendFrom(const File& src, uint64_t src_offset, uint64_t n);
  // Checks every byte was written, fsyncs and closes.
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  absl::Status Reserve(uint64_t n);
  File file_;
  std::vector<TensorSpec> tensors_;
  uint64_t data_bytes_ = 0;
  uint64_t written_ = 0;
};

// Writes a whole safetensors file from in-memory tensors (tests, small files).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<TensorSpec, std::string>>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_SAFETENSORS_H_
