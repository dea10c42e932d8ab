#include "model/checkpoint.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace llamapro {
namespace {

using Json = nlohmann::json;

absl::Status NoWeightsError(const std::string& dir) {
  std::string hint;
  auto files = ListFiles(dir);
  if (files.ok()) {
    for (const std::string& f : *files) {
      if (absl::EndsWith(f, ".bin") || absl::EndsWith(f, ".pt") || absl::EndsWith(f, ".pth")) {
        hint = absl::StrCat("; found PyTorch weights (", f,
                            "): convert them to safetensors first, e.g. with transformers: "
                            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, "
                            "safe_serialization=True)");
        break;
      }
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no ", kSingleWeightsFile, " or ", kWeightsIndexFile, " in ", dir, hint));
}

absl::Status IndexError(const std::string& index_path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", message));
}

// Files that hold weights in another format.
bool IsOtherWeightsFile(absl::string_view name) {
  for (absl::string_view ext : {".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx",
                                ".safetensors", ".bin.index.json"}) {
    if (absl::EndsWith(name, ext)) return true;
  }
  return absl::StartsWith(name, "pytorch_model") || absl::StartsWith(name, "tf_model") ||
         absl::StartsWith(name, "flax_model");
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  LP_ASSIGN_OR_RETURN(File src, File::OpenForRead(from));
  LP_ASSIGN_OR_RETURN(uint64_t size, src.Size());
  LP_ASSIGN_OR_RETURN(File dst, File::CreateNew(to));
  LP_RETURN_IF_ERROR(dst.AppendFrom(src, 0, size));
  LP_RETURN_IF_ERROR(dst.Sync());
  return dst.Close();
}

}  // namespace

absl::Status CopySideFiles(const std::string& from_dir, const std::string& to_dir,
                           const std::vector<std::string>& exclude,
                           std::vector<std::string>* copied, std::vector<std::string>* skipped) {
  LP_ASSIGN_OR_RETURN(std::vector<std::string> names, ListFiles(from_dir));
  for (const std::string& name : names) {
    if (name == kWeightsIndexFile ||
        std::find(exclude.begin(), exclude.end(), name) != exclude.end()) {
      continue;
    }
    if (IsOtherWeightsFile(name)) {
      if (!absl::EndsWith(name, ".safetensors") && skipped != nullptr) skipped->push_back(name);
      continue;
    }
    LP_RETURN_IF_ERROR(CopyFile(JoinPath(from_dir, name), JoinPath(to_dir, name)));
    if (copied != nullptr) copied->push_back(name);
  }
  return absl::OkStatus();
}

uint64_t CheckpointReader::TotalTensorBytes() const {
  uint64_t total = 0;
  for (const auto& file : files_) {
    for (const TensorInfo& t : file->tensors()) total += t.NumBytes();
  }
  return total;
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(const std::string& dir) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(absl::StrCat("model directory ", dir, " does not exist"));
  }
  auto reader = std::unique_ptr<CheckpointReader>(new CheckpointReader());
  reader->dir_ = dir;
  const std::string index_path = JoinPath(dir, kWeightsIndexFile);
  const std::string single_path = JoinPath(dir, kSingleWeightsFile);

  if (PathExists(index_path)) {
    reader->sharded_ = true;
    LP_ASSIGN_OR_RETURN(std::string text, ReadFile(index_path));
    Json index;
    try {
      index = Json::parse(text);
    } catch (const Json::exception& e) {
      return IndexError(index_path, absl::StrCat("not valid JSON: ", e.what()));
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      return IndexError(index_path, "missing object 'weight_map'");
    }
    std::map<std::string, std::vector<std::string>> by_shard;  // Sorted: shard order.
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      if (!shard.is_string()) {
        return IndexError(index_path,
                          absl::StrCat("weight_map entry for '", tensor, "' is not a file name"));
      }
      const std::string& name = shard.get_ref<const std::string&>();
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == ".." ||
          !absl::EndsWith(name, ".safetensors")) {
        return IndexError(index_path,
                          absl::StrCat("weight_map entry for '", tensor, "' names '", name,
                                       "', which is not a .safetensors file in this directory"));
      }
      by_shard[name].push_back(tensor);
    }
    if (by_shard.empty()) return IndexError(index_path, "weight_map is empty");
    for (const auto& [shard, tensors] : by_shard) {
      const std::string shard_path = JoinPath(dir, shard);
      if (!PathExists(shard_path)) {
        return IndexError(index_path,
                          absl::StrCat("lists shard ", shard, ", which is missing (tensor '",
                                       tensors.front(), "')"));
      }
      LP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(shard_path));
      std::set<std::string> listed(tensors.begin(), tensors.end());
      for (const std::string& tensor : tensors) {
        if (file->Find(tensor) == nullptr) {
          return absl::InvalidArgumentError(absl::StrCat(shard_path, ": tensor '", tensor,
                                                         "' is listed in ", kWeightsIndexFile,
                                                         " but missing from this shard"));
        }
      }
      for (const TensorInfo& t : file->tensors()) {
        if (listed.count(t.name) == 0) {
          return absl::InvalidArgumentError(absl::StrCat(shard_path, ": tensor '", t.name,
                                                         "' is not listed in ", kWeightsIndexFile,
                                                         " (stale or mismatched shard?)"));
        }
      }
      reader->files_.push_back(std::move(file));
    }
  } else if (PathExists(single_path)) {
    LP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single_path));
    reader->files_.push_back(std::move(file));
  } else {
    return NoWeightsError(dir);
  }

  for (const auto& file : reader->files_) {
    for (const TensorInfo& t : file->tensors()) {
      auto [it, inserted] = reader->by_name_.emplace(t.name, TensorRef{file.get(), &t});
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' appears in both ",
                                                       it->second.file->path(), " and ",
                                                       file->path()));
      }
      reader->names_.push_back(t.name);
    }
  }
  return reader;
}

std::optional<TensorRef> CheckpointReader::Find(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

absl::Status CheckpointReader::ReadF32(const std::string& name, std::vector<float>* out) const {
  auto ref = Find(name);
  if (!ref) {
    return absl::NotFoundError(absl::StrCat(dir_, ": tensor '", name, "' is missing"));
  }
  const TensorInfo& info = *ref->info;
  out->resize(static_cast<size_t>(info.NumElements()));
  if (!ConvertToF32(ref->file->Data(info), info.dtype, out->size(), out->data())) {
    return absl::InvalidArgumentError(absl::StrCat(ref->file->path(), ": tensor '", name,
                                                   "' has dtype ", DTypeName(info.dtype),
                                                   "; expected F32, F16 or BF16"));
  }
  return absl::OkStatus();
}

absl::Status CheckpointReader::ReadF32Slice(const std::string& name, int dim, int64_t begin,
                                            int64_t count, std::vector<float>* out) const {
  auto ref = Find(name);
  if (!ref) {
    return absl::NotFoundError(absl::StrCat(dir_, ": tensor '", name, "' is missing"));
  }
  const TensorInfo& info = *ref->info;
  const size_t rank = info.shape.size();
  if (rank < 1 || rank > 2 || dim < 0 || static_cast<size_t>(dim) >= rank || begin < 0 ||
      count < 0 || begin + count > info.shape[dim]) {
    return absl::InvalidArgumentError(absl::StrCat(ref->file->path(), ": tensor '", name,
                                                   "' has no slice [", begin, ", ", begin + count,
                                                   ") along dimension ", dim));
  }
  const int64_t rows = info.shape[0];
  const int64_t cols = rank == 2 ? info.shape[1] : 1;
  const size_t element = DTypeSize(info.dtype);
  const auto* base = static_cast<const uint8_t*>(ref->file->Data(info));
  const int64_t out_rows = dim == 0 ? count : rows;
  const int64_t out_cols = dim == 0 ? cols : count;
  out->resize(static_cast<size_t>(out_rows * out_cols));
  for (int64_t r = 0; r < out_rows; ++r) {
    const int64_t src_row = dim == 0 ? begin + r : r;
    const int64_t src_col = dim == 0 ? 0 : begin;
    const uint8_t* src = base + (src_row * cols + src_col) * static_cast<int64_t>(element);
    if (!ConvertToF32(src, info.dtype, static_cast<size_t>(out_cols), out->data() + r * out_cols)) {
      return absl::InvalidArgumentError(absl::StrCat(ref->file->path(), ": tensor '", name,
                                                     "' has dtype ", DTypeName(info.dtype),
                                                     "; expected F32, F16 or BF16"));
    }
  }
  return absl::OkStatus();
}

// --- Writing ---------------------------------------------------------------------

ShardLayout PlanShards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_bytes) {
  ShardLayout layout;
  size_t shard = 0;
  uint64_t in_shard = 0;
  bool shard_empty = true;
  for (const TensorSpec& t : tensors) {
    const uint64_t bytes = t.NumBytes();
    if (!shard_empty && in_shard + bytes > max_shard_bytes) {
      ++shard;
      in_shard = 0;
    }
    layout.shard_of.push_back(shard);
    in_shard += bytes;
    shard_empty = false;
  }
  const size_t count = tensors.empty() ? 1 : shard + 1;
  if (count == 1) {
    layout.file_names.push_back(kSingleWeightsFile);
  } else {
    for (size_t i = 0; i < count; ++i) {
      layout.file_names.push_back(absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, count));
    }
  }
  return layout;
}

absl::StatusOr<std::unique_ptr<CheckpointWriter>> CheckpointWriter::Create(
    const std::string& dir, std::vector<TensorSpec> tensors, uint64_t max_shard_bytes) {
  if (max_shard_bytes == 0) return absl::InvalidArgumentError("shard size must be positive");
  auto writer = std::unique_ptr<CheckpointWriter>(new CheckpointWriter());
  writer->dir_ = dir;
  writer->layout_ = PlanShards(tensors, max_shard_bytes);
  writer->tensors_ = std::move(tensors);
  if (writer->tensors_.empty()) return absl::InvalidArgumentError("no tensors to write");
  LP_RETURN_IF_ERROR(writer->OpenShard(0));
  return writer;
}

uint64_t CheckpointWriter::TotalBytes() const {
  uint64_t total = 0;
  for (const TensorSpec& t : tensors_) total += t.NumBytes();
  return total;
}

absl::Status CheckpointWriter::OpenShard(size_t shard) {
  std::vector<TensorSpec> in_shard;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (layout_.shard_of[i] == shard) in_shard.push_back(tensors_[i]);
  }
  current_shard_ = shard;
  LP_ASSIGN_OR_RETURN(current_, SafetensorsWriter::Create(JoinPath(dir_, layout_.file_names[shard]),
                                                          std::move(in_shard), {{"format", "pt"}}));
  return absl::OkStatus();
}

absl::Status CheckpointWriter::BeginTensor(size_t index) {
  if (index != next_tensor_ || index >= tensors_.size()) {
    return absl::InternalError(
        absl::StrCat("tensor ", index, " written out of order (expected ", next_tensor_, ")"));
  }
  if (layout_.shard_of[index] != current_shard_) {
    LP_RETURN_IF_ERROR(current_->Finish());
    LP_RETURN_IF_ERROR(OpenShard(layout_.shard_of[index]));
  }
  ++next_tensor_;
  return absl::OkStatus();
}

absl::Status CheckpointWriter::Finish() {
  if (next_tensor_ != tensors_.size()) {
    return absl::InternalError(
        absl::StrCat("only ", next_tensor_, " of ", tensors_.size(), " tensors were written"));
  }
  LP_RETURN_IF_ERROR(current_->Finish());
  if (layout_.file_names.size() == 1) return absl::OkStatus();
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", TotalBytes()}};
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors_[a].name < tensors_[b].name; });
  for (size_t i : order) map[tensors_[i].name] = layout_.file_names[layout_.shard_of[i]];
  index["weight_map"] = std::move(map);
  return WriteFileAtomic(JoinPath(dir_, kWeightsIndexFile), index.dump(2) + "\n");
}

}  // namespace llamapro
