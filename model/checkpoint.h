// A Hugging Face checkpoint directory's weights: `model.safetensors`, or
// shards listed by `model.safetensors.index.json`.
#ifndef LLAMAPRO_MODEL_CHECKPOINT_H_
#define LLAMAPRO_MODEL_CHECKPOINT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/safetensors.h"

namespace llamapro {

inline constexpr char kSingleWeightsFile[] = "model.safetensors";
inline constexpr char kWeightsIndexFile[] = "model.safetensors.index.json";

struct TensorRef {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* info = nullptr;
};

// Read access to every tensor of a checkpoint directory, memory-mapped.
// Thread-safe for concurrent reads.
class CheckpointReader {
 public:
  // Opens `dir`, validating every file's header and, when sharded, that the
  // index and the shards agree (each listed tensor in its shard, no tensor
  // in two shards, no shard naming a path outside the directory).
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool sharded() const { return sharded_; }
  // Tensor names in file order (shard by shard, by data offset).
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  uint64_t TotalTensorBytes() const;

  // nullopt if absent.
  std::optional<TensorRef> Find(const std::string& name) const;
  // Converts the named tensor (F32, F16, BF16 or F64) to fp32. Errors name
  // the file and tensor.
  absl::Status ReadF32(const std::string& name, std::vector<float>* out) const;
  // Part of a 1-D or 2-D tensor as fp32: along `dim` (0 rows, 1 columns),
  // indices [begin, begin + count); only those bytes of the mapping are
  // read (tensor-parallel loading).
  absl::Status ReadF32Slice(const std::string& name, int dim, int64_t begin, int64_t count,
                            std::vector<float>* out) const;

 private:
  CheckpointReader() = default;
  std::string dir_;
  bool sharded_ = false;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::vector<std::string> names_;
  std::unordered_map<std::string, TensorRef> by_name_;
};

// Copies the files of checkpoint directory `from_dir` that are not weights
// and not named in `exclude` (tokenizer files, generation_config.json, a
// README...) into `to_dir`. Weights in other formats (*.bin, *.pt, *.pth,
// *.ckpt, *.gguf, *.h5, *.msgpack, *.onnx, pytorch_model*, tf_model*,
// flax_model*) are not copied, since they would hold stale weights; they are
// listed in `*skipped`. Subdirectories are not copied.
absl::Status CopySideFiles(const std::string& from_dir, const std::string& to_dir,
                           const std::vector<std::string>& exclude,
                           std::vector<std::string>* copied, std::vector<std::string>* skipped);

// How tensors are split over output files: greedily, in order, starting a new
// shard when the next tensor would push the current one past `max_shard_bytes`
// (as transformers' save_pretrained does). One shard is written as
// `model.safetensors`, several as `model-0000k-of-0000n.safetensors`.
struct ShardLayout {
  std::vector<std::string> file_names;
  std::vector<size_t> shard_of;  // Per tensor.
};
ShardLayout PlanShards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_bytes);

// Writes a checkpoint's weights into a directory, tensor by tensor in layout
// order, streaming (no tensor needs to be in memory as a whole). Not
// thread-safe. Files are complete only after Finish().
class CheckpointWriter {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointWriter>> Create(const std::string& dir,
                                                                  std::vector<TensorSpec> tensors,
                                                                  uint64_t max_shard_bytes);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  const ShardLayout& layout() const { return layout_; }
  uint64_t TotalBytes() const;

  // Begins tensor `index`, which must be the next one in order. The bytes of
  // the tensor are then written with the Append* calls.
  absl::Status BeginTensor(size_t index);
  absl::Status Append(const void* data, size_t n) { return current_->Append(data, n); }
  absl::Status AppendZeros(uint64_t n) { return current_->AppendZeros(n); }
  absl::Status AppendFrom(const File& src, uint64_t offset, uint64_t n) {
    return current_->AppendFrom(src, offset, n);
  }
  // Completes the last shard and writes the index when sharded.
  absl::Status Finish();

 private:
  CheckpointWriter() = default;
  absl::Status OpenShard(size_t shard);
  std::string dir_;
  std::vector<TensorSpec> tensors_;
  ShardLayout layout_;
  size_t next_tensor_ = 0;
  size_t current_shard_ = 0;
  std::unique_ptr<SafetensorsWriter> current_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_CHECKPOINT_H_
