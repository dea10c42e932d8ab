// llamapro.json: the record of how a checkpoint was expanded, kept beside
// config.json. Training reads it to know which blocks are new; repeated
// (progressive) expansion extends its lineage.
#ifndef LLAMAPRO_MODEL_LINEAGE_H_
#define LLAMAPRO_MODEL_LINEAGE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

inline constexpr char kExpansionFile[] = "llamapro.json";

// One application of block expansion.
struct ExpansionStage {
  int64_t stage = 0;                 // 1 for the first expansion, 2 for the next...
  int64_t source_layers = 0;         // Blocks before this stage.
  int64_t target_layers = 0;         // Blocks after it.
  std::string layout;                // interleaved | top | bottom | positions
  int64_t groups = 0;                // Interleaved: the number of groups P; else 0.
  std::vector<int64_t> new_blocks;   // Indices (in this stage's output) of the added blocks.
  std::vector<int64_t> copied_from;  // Per added block: its source index in this stage's input.
  std::string source_model;          // Absolute path of the input checkpoint.
  std::string created_at;            // UTC, ISO 8601.
  std::string llamapro_version;
};

struct ExpansionRecord {
  // Per current block: 0 for blocks of the original model, k for blocks added
  // by stage k.
  std::vector<int64_t> block_stage;
  std::vector<ExpansionStage> lineage;

  int64_t NumLayers() const { return static_cast<int64_t>(block_stage.size()); }
  // Blocks added by the latest stage: what post-pretraining trains.
  std::vector<int64_t> NewBlocks() const;
};

absl::StatusOr<ExpansionRecord> ParseExpansionRecord(absl::string_view text,
                                                     absl::string_view source);
// Reads `<dir>/llamapro.json`; nullopt when the model was never expanded.
// Refuses a record whose block count differs from `num_layers` (config.json).
absl::StatusOr<std::optional<ExpansionRecord>> LoadExpansionRecord(const std::string& dir,
                                                                   int64_t num_layers);
std::string SerializeExpansionRecord(const ExpansionRecord& record);

}  // namespace llamapro

#endif  // LLAMAPRO_MODEL_LINEAGE_H_
