#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

uint64_t ReadLittleEndian64(const char* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(p[i]);
  return value;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status Malformed(absl::string_view file, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": malformed safetensors file: ", message));
}

absl::Status MalformedTensor(absl::string_view file, absl::string_view tensor,
                             absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat(file, ": malformed safetensors file: tensor '", tensor, "': ", message));
}

// Reads one header entry into `info`.
absl::Status ParseEntry(absl::string_view file, const std::string& name, const Json& entry,
                        TensorInfo* info) {
  if (!entry.is_object()) return MalformedTensor(file, name, "entry is not a JSON object");
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return MalformedTensor(file, name, absl::StrCat("unexpected field '", key, "'"));
    }
  }
  info->name = name;
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return MalformedTensor(file, name, "missing string field 'dtype'");
  }
  auto dtype = ParseDTypeName(dtype_it->get_ref<const std::string&>());
  if (!dtype) {
    return MalformedTensor(file, name,
                           absl::StrCat("unknown dtype '", dtype_it->get<std::string>(), "'"));
  }
  info->dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return MalformedTensor(file, name, "missing array field 'shape'");
  }
  uint64_t elements = 1;
  for (const Json& dim : *shape_it) {
    if (!dim.is_number_unsigned() || dim.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return MalformedTensor(file, name,
                             absl::StrCat("shape entry ", dim.dump(), " is not a valid dimension"));
    }
    uint64_t d = dim.get<uint64_t>();
    if (__builtin_mul_overflow(elements, d, &elements)) {
      return MalformedTensor(file, name, "shape has more elements than fit in 64 bits");
    }
    info->shape.push_back(static_cast<int64_t>(d));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned()) {
    return MalformedTensor(file, name, "'data_offsets' must be two non-negative integers");
  }
  info->begin = (*offsets_it)[0].get<uint64_t>();
  info->end = (*offsets_it)[1].get<uint64_t>();
  if (info->end < info->begin) {
    return MalformedTensor(
        file, name,
        absl::StrCat("data_offsets [", info->begin, ", ", info->end, "] end before they begin"));
  }
  uint64_t expected_bytes = 0;
  if (__builtin_mul_overflow(elements, static_cast<uint64_t>(DTypeSize(info->dtype)),
                             &expected_bytes)) {
    return MalformedTensor(file, name, "byte size overflows 64 bits");
  }
  if (expected_bytes != info->NumBytes()) {
    return MalformedTensor(
        file, name,
        absl::StrCat("shape ", ShapeString(info->shape), " of ", DTypeName(info->dtype), " needs ",
                     expected_bytes, " bytes but data_offsets [", info->begin, ", ", info->end,
                     "] span ", info->NumBytes()));
  }
  return absl::OkStatus();
}

}  // namespace

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

uint64_t TensorSpec::NumBytes() const {
  uint64_t n = DTypeSize(dtype);
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view prefix,
                                                         uint64_t file_size,
                                                         absl::string_view file_name) {
  if (file_size < 8 || prefix.size() < 8) {
    return Malformed(file_name, absl::StrCat("truncated: the file has ", file_size,
                                             " bytes but must start with an 8-byte header length"));
  }
  SafetensorsHeader header;
  header.header_bytes = ReadLittleEndian64(prefix.data());
  if (header.header_bytes > file_size - 8) {
    return Malformed(file_name, absl::StrCat("header length ", header.header_bytes,
                                             " runs past the end of the file (", file_size,
                                             " bytes; truncated?)"));
  }
  if (header.header_bytes > kMaxSafetensorsHeaderBytes) {
    return Malformed(file_name,
                     absl::StrCat("header length ", header.header_bytes, " exceeds the limit of ",
                                  kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (header.header_bytes < 2) {
    return Malformed(file_name, absl::StrCat("header length ", header.header_bytes,
                                             " is too small for a JSON object"));
  }
  header.data_start = 8 + header.header_bytes;
  if (prefix.size() < header.data_start) {
    return Malformed(file_name, "header is cut short (truncated file?)");
  }
  absl::string_view text = prefix.substr(8, header.header_bytes);
  if (text.front() != '{') {
    return Malformed(file_name, "header does not start with '{'");
  }

  std::set<std::string> seen;
  std::string duplicate;
  Json::parser_callback_t detect_duplicates = [&](int depth, Json::parse_event_t event,
                                                  Json& parsed) {
    if (depth == 1 && event == Json::parse_event_t::key && duplicate.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(text.begin(), text.end(), detect_duplicates);
  } catch (const Json::exception& e) {
    return Malformed(file_name, absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return Malformed(file_name, "header is not a JSON object");
  if (!duplicate.empty()) {
    return Malformed(file_name, absl::StrCat("tensor name '", duplicate, "' appears twice"));
  }

  for (const auto& [name, entry] : root.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Malformed(file_name, "__metadata__ is not a JSON object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return Malformed(file_name,
                           absl::StrCat("__metadata__ value for '", key, "' is not a string"));
        }
        header.metadata.emplace_back(key, value.get<std::string>());
      }
      continue;
    }
    TensorInfo info;
    LP_RETURN_IF_ERROR(ParseEntry(file_name, name, entry, &info));
    header.tensors.push_back(std::move(info));
  }

  // Contiguous, non-overlapping data that ends exactly at the end of the file.
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  const uint64_t data_size = file_size - header.data_start;
  uint64_t cursor = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& info : header.tensors) {
    if (info.end > data_size) {
      return MalformedTensor(file_name, info.name,
                             absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                                          "] run past the end of the data section (", data_size,
                                          " bytes; truncated file?)"));
    }
    if (info.begin < cursor) {
      return MalformedTensor(
          file_name, info.name,
          absl::StrCat("data_offsets [", info.begin, ", ", info.end, "] overlap tensor '",
                       previous->name, "' [", previous->begin, ", ", previous->end, "]"));
    }
    if (info.begin > cursor) {
      return MalformedTensor(
          file_name, info.name,
          absl::StrCat("data starts at byte ", info.begin, " but the previous tensor ends at ",
                       cursor, " (safetensors data must be contiguous)"));
    }
    cursor = info.end;
    previous = &info;
  }
  if (cursor != data_size) {
    return Malformed(file_name,
                     absl::StrCat("tensor data ends at byte ", cursor, " of a data section of ",
                                  data_size, " bytes: trailing bytes after the last tensor"));
  }
  return header;
}

// --- SafetensorsFile -------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  auto file = std::unique_ptr<SafetensorsFile>(new SafetensorsFile());
  LP_ASSIGN_OR_RETURN(file->mapped_, MappedFile::Open(path));
  const MappedFile& mapped = *file->mapped_;
  absl::string_view bytes(reinterpret_cast<const char*>(mapped.data()), mapped.size());
  LP_ASSIGN_OR_RETURN(file->header_, ParseSafetensorsHeader(bytes, mapped.size(), path));
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) {
    file->by_name_.emplace(file->header_.tensors[i].name, i);
  }
  // The header pages are not needed any more.
  mapped.DropPages(0, file->header_.data_start);
  return file;
}

const TensorInfo* SafetensorsFile::Find(absl::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

// --- Writing ---------------------------------------------------------------------

std::string SerializeSafetensorsHeader(
    const std::vector<TensorSpec>& tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  OrderedJson root = OrderedJson::object();
  if (!metadata.empty()) {
    OrderedJson meta = OrderedJson::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    root["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    const uint64_t bytes = t.NumBytes();
    root[t.name] = {{"dtype", DTypeName(t.dtype)},
                    {"shape", t.shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string json = root.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += json;
  return out;
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorSpec> tensors,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::set<std::string> names;
  for (const TensorSpec& t : tensors) {
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", t.name, "' is listed twice"));
    }
  }
  auto writer = std::unique_ptr<SafetensorsWriter>(new SafetensorsWriter());
  LP_ASSIGN_OR_RETURN(writer->file_, File::CreateNew(path));
  for (const TensorSpec& t : tensors) writer->data_bytes_ += t.NumBytes();
  writer->tensors_ = std::move(tensors);
  LP_RETURN_IF_ERROR(writer->file_.Write(SerializeSafetensorsHeader(writer->tensors_, metadata)));
  return writer;
}

absl::Status SafetensorsWriter::Reserve(uint64_t n) {
  if (n > data_bytes_ - written_) {
    return absl::InternalError(absl::StrCat(file_.path(), ": writing ", n, " more bytes than the ",
                                            data_bytes_, " the header declares"));
  }
  written_ += n;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Append(const void* data, size_t n) {
  LP_RETURN_IF_ERROR(Reserve(n));
  return file_.Write(data, n);
}

absl::Status SafetensorsWriter::AppendZeros(uint64_t n) {
  LP_RETURN_IF_ERROR(Reserve(n));
  return file_.WriteZeros(n);
}

absl::Status SafetensorsWriter::AppendFrom(const File& src, uint64_t src_offset, uint64_t n) {
  LP_RETURN_IF_ERROR(Reserve(n));
  return file_.AppendFrom(src, src_offset, n);
}

absl::Status SafetensorsWriter::Finish() {
  if (written_ != data_bytes_) {
    return absl::InternalError(
        absl::StrCat(file_.path(), ": wrote ", written_, " of ", data_bytes_, " data bytes"));
  }
  LP_RETURN_IF_ERROR(file_.Sync());
  return file_.Close();
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<TensorSpec, std::string>>& tensors,
                              const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<TensorSpec> specs;
  for (const auto& [spec, bytes] : tensors) {
    if (bytes.size() != spec.NumBytes()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name, "' has ", bytes.size(),
                                                     " bytes, its shape needs ", spec.NumBytes()));
    }
    specs.push_back(spec);
  }
  LP_ASSIGN_OR_RETURN(auto writer, SafetensorsWriter::Create(path, std::move(specs), metadata));
  for (const auto& [spec, bytes] : tensors) {
    LP_RETURN_IF_ERROR(writer->Append(bytes.data(), bytes.size()));
  }
  return writer->Finish();
}

}  // namespace llamapro
