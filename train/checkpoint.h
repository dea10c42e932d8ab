// Training checkpoints (DESIGN.md, Checkpoints): a directory that
// transformers loads as is (config.json, safetensors weights, tokenizer and
// side files, llamapro.json), plus trainer_state.json and
// optimizer.safetensors (fp32 master weights and optimizer state of the
// trainable tensors only). Written into a staging directory and renamed; a
// `latest` file in the output directory names the newest complete one; only
// the last K are kept.
//
// Frozen tensors are copied byte for byte from the checkpoint the run
// started from; trainable ones are rounded from their fp32 master values to
// their source dtype (the exact fp32 values live in optimizer.safetensors,
// which is what a resume reads). With LoRA, the adapted weights are written
// merged, or the adapters as a PEFT adapter (CheckpointWriteOptions); the
// adapters' exact values are in optimizer.safetensors, and a resume reads the
// base weights from the run's `model`, not from the checkpoint.
#ifndef LLAMAPRO_TRAIN_CHECKPOINT_H_
#define LLAMAPRO_TRAIN_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/checkpoint.h"
#include "model/llama_params.h"
#include "train/optimizer.h"

namespace llamapro {

inline constexpr char kTrainerStateFile[] = "trainer_state.json";
inline constexpr char kOptimizerStateFile[] = "optimizer.safetensors";
inline constexpr char kLatestFile[] = "latest";

// Where a run stands; everything a resume needs besides the tensors. No
// wall-clock values: two runs that reach the same step write the same bytes.
struct TrainerState {
  int64_t step = 0;  // Optimizer steps completed.
  int64_t total_steps = 0;
  int64_t next_sample = 0;   // Global index of the next training sample.
  int64_t tokens = 0;        // Input tokens consumed.
  double learning_rate = 0;  // Of the last step.
  double loss = 0;           // Of the last step.
  uint64_t seed = 0;
  int64_t seq_len = 0;
  int64_t global_sequences = 0;
  std::string mixture;  // As ParseMixture reads it.
  std::string optimizer;
  std::vector<std::string> trainable;  // Names of the trainable tensors.
};

struct CheckpointWriteOptions {
  std::string output_dir;
  int keep = 3;  // Checkpoints kept (the newest); 0 keeps all.
  uint64_t shard_bytes = 5'000'000'000;
  // With LoRA adapters: true writes each adapted weight merged (W + scale B A,
  // a plain model); false keeps the base weights and writes the adapters as a
  // PEFT adapter (adapter_config.json, adapter_model.safetensors) beside them.
  bool merge_lora = true;
};

// Writes checkpoint-<step> under options.output_dir and points `latest` at
// it. `source` is the checkpoint the run loaded (frozen tensors and extra
// tensors are copied from it); `side_files_dir` provides the tokenizer and
// other side files (usually source->dir()). Returns the directory written.
absl::StatusOr<std::string> WriteTrainingCheckpoint(const CheckpointWriteOptions& options,
                                                    const TrainerState& state, LlamaParams& params,
                                                    const Optimizer& optimizer,
                                                    const CheckpointReader& source);

// The directory `latest` names; NotFound when there is none.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& output_dir);

// A model directory as users name it: a checkpoint (it has config.json), or a
// training run's output_dir, which stands for its latest checkpoint. Lets a
// pipeline's next job name the previous job's output_dir.
absl::StatusOr<std::string> ResolveModelDir(const std::string& path);
absl::StatusOr<TrainerState> LoadTrainerState(const std::string& checkpoint_dir);
// Restores the exact fp32 values of the trainable tensors and the
// optimizer's state from `checkpoint_dir`. Refuses a checkpoint whose
// trainable tensors differ from `params`' (a changed `trainable:`), naming them.
absl::Status LoadOptimizerState(const std::string& checkpoint_dir, LlamaParams* params,
                                Optimizer* optimizer);

std::string CheckpointName(int64_t step);  // "checkpoint-000100"

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_CHECKPOINT_H_
