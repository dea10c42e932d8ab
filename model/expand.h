// Block expansion (LLaMA Pro, Wu et al. 2024): insert copies of existing
// blocks whose output projections (o_proj, down_proj, and their biases) are
// zero, so each new block adds exactly 0 to the residual stream and the
// expanded model computes the same function as the original.
#ifndef LLAMAPRO_MODEL_EXPAND_H_
#define LLAMAPRO_MODEL_EXPAND_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/dtype.h"
#include "model/checkpoint.h"
#include "model/config.h"

namespace llamapro {

enum class ExpansionLayout {
  kInterleaved,  // P groups of L/P blocks; copies of each group's top block after it.
  kTop,          // All new blocks after block L-1, copies of it.
  kBottom,       // All new blocks before block 0, copies of it.
  kPositions,    // A copy of block i after block i, for each listed i.
};
absl::string_view LayoutName(ExpansionLayout layout);
absl::StatusOr<ExpansionLayout> ParseLayout(absl::string_view name);

struct ExpansionSpec {
  ExpansionLayout layout = ExpansionLayout::kInterleaved;
  int64_t add_blocks = 0;          // N; for interleaved, defaults to `groups`.
  int64_t groups = 0;              // P (interleaved only); defaults to `add_blocks`.
  std::vector<int64_t> positions;  // kPositions: source blocks to copy (repeats allowed).
};

struct ExpansionPlan {
  ExpansionLayout layout = ExpansionLayout::kInterleaved;
  int64_t source_layers = 0;
  int64_t groups = 0;
  std::vector<int64_t> source_of;    // Per output block: the source block it is (a copy of).
  std::vector<bool> is_new;          // Per output block.
  std::vector<int64_t> new_blocks;   // Output indices of the new blocks.
  std::vector<int64_t> copied_from;  // Per new block: its source block.

  int64_t target_layers() const { return static_cast<int64_t>(source_of.size()); }
};

// Plans an expansion of `source_layers` blocks. Refuses a request that cannot
// be split evenly with a message listing the valid choices.
absl::StatusOr<ExpansionPlan> PlanExpansion(int64_t source_layers, const ExpansionSpec& spec);

struct ExpandProgress {
  absl::string_view phase;  // "write", "verify"
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  double seconds = 0;
};
using ExpandProgressFn = std::function<void(const ExpandProgress&)>;

struct ExpandOptions {
  std::string model_dir;
  std::string out_dir;
  ExpansionSpec spec;
  std::optional<DType> dtype;  // Output dtype for float tensors; nullopt keeps the source's.
  uint64_t shard_bytes = 5'000'000'000;
  bool verify = false;        // Fail unless probe logits are bit-identical.
  bool force = false;         // Replace an existing out_dir.
  ExpandProgressFn progress;  // Optional; called from the calling thread.
};

struct VerifyResult {
  int64_t sequences = 0;
  int64_t seq_len = 0;
  int64_t logits = 0;      // Values compared.
  int64_t mismatches = 0;  // Values whose bits differ.
  double max_abs_diff = 0;
  bool identical() const { return mismatches == 0; }
};

struct ExpandResult {
  ExpansionPlan plan;
  LlamaConfig config;  // Of the output.
  int64_t tensors = 0;
  uint64_t bytes_written = 0;       // Tensor data bytes.
  std::vector<std::string> dtypes;  // Distinct dtypes of the output tensors ("BF16", ...).
  std::vector<std::string> weight_files;
  std::vector<std::string> copied_files;   // Side files (tokenizer, generation config...).
  std::vector<std::string> skipped_files;  // Stale weights in other formats, not copied.
  double seconds = 0;                      // Writing, excluding verification.
  std::optional<VerifyResult> verify;
};

// Expands `options.model_dir` into `options.out_dir`: validates the input
// fully before writing anything, streams tensor by tensor into a staging
// directory beside the output (memory stays at a few MB whatever the model
// size), verifies if asked, and only then renames it into place. On any error
// nothing is left at out_dir (an existing one is untouched).
absl::StatusOr<ExpandResult> ExpandCheckpoint(const ExpandOptions& options);

// Runs both checkpoints on the same probe sequences (block by block, so memory
// stays at one block in fp32) and compares the logits bit for bit. With
// `round_through`, the reference's weights are rounded to that dtype first.
absl::StatusOr<VerifyResult> CompareLogits(const CheckpointReader& reference,
                                           const LlamaConfig& reference_config,
                                           const CheckpointReader& candidate,
                                           const LlamaConfig& candidate_config,
                                           std::optional<DType> round_through);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_EXPAND_H_
