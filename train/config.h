// The training job config: a YAML file (docs/config.md documents every key),
// parsed and validated into a plain struct tree with every default filled in
// and every derived quantity (global batch in tokens and sequences, micro-
// batches per step, total steps) resolved.
//
// Validation is strict: an unknown key (a typo must not be silently ignored),
// a wrong type, a missing required key, an out-of-range value or an
// inconsistent combination is an InvalidArgument error of the form
//   <source>: <key path>: <what is wrong>
// e.g. `job.yaml: optimizer.lr: must be a positive number, got "fast"` or
// `job.yaml: optimizer.learning_rate: unknown key (did you mean lr?)`.
// Checks that need the model or the token store (layer indices in range,
// corpora present, seq_len within the model's context) are the trainer's.
//
// Everything here is a pure function of its inputs except LoadJobConfig,
// which reads one file; all of it is thread-safe.
#ifndef LLAMAPRO_TRAIN_CONFIG_H_
#define LLAMAPRO_TRAIN_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/sampler.h"
#include "train/optimizer.h"
#include "train/schedule.h"

namespace llamapro {

struct DataConfig {
  // Token store directory (resolved, see ParseJobConfig). Empty when the
  // config omits it: a job submitted to a coordinator reads from the
  // coordinator's store; `llamaproctl train` requires it.
  std::string store;
  // Corpora and their weights as written (the Sampler normalises them). An
  // SFT corpus is named here like any other; its samples carry loss masks.
  std::vector<MixtureComponent> mixture;
  int64_t seq_len = 0;  // Tokens per training sequence.
  uint64_t seed = 0;    // Sampling seed.
};

// Which tensors train. kExpanded: the blocks llamapro.json marks as new
// (embeddings, final norm and lm_head frozen). kAll: everything. kLayers:
// the listed blocks, plus embeddings / final norm / lm_head where set.
// When the YAML has no `trainable` key, explicit_ is false and mode is
// kExpanded: the trainer then uses kExpanded if the model has llamapro.json
// and kAll otherwise (an explicit `expanded` on a model without one is an
// error there).
struct TrainableConfig {
  enum class Mode { kExpanded, kAll, kLayers, kLora, kMoe };
  Mode mode = Mode::kExpanded;
  std::vector<int64_t> layers;  // kLayers: block indices, sorted and distinct.
  bool embeddings = false;      // true for kAll.
  bool norm = false;            // The final RMSNorm; true for kAll.
  bool lm_head = false;         // true for kAll.
  bool explicit_ = false;       // The YAML set `trainable`.
};

// LoRA (`trainable: lora`): low-rank adapters on the chosen weights; the
// base model stays frozen. See docs/config.md#lora.
struct LoraConfig {
  int64_t rank = 8;
  double alpha = 16;
  double dropout = 0;                                       // Only 0 is supported.
  std::vector<std::string> targets = {"q_proj", "v_proj"};  // PEFT's default for LLaMA.
  bool new_blocks_only = false;  // `blocks: new`: only an expanded model's new blocks.
  bool merge = true;             // `export: merged` (default) or `adapter`.
};

// "expanded", "all", "layers", "lora", "moe".
absl::string_view TrainableModeName(TrainableConfig::Mode mode);

// One optimizer step consumes global_sequences sequences of seq_len tokens,
// in MicroBatchesPerStep() forward/backward passes of micro_batch sequences
// (gradient accumulation). global_sequences is a multiple of micro_batch.
struct BatchConfig {
  int64_t global_tokens = 0;  // global_sequences * seq_len.
  int64_t global_sequences = 0;
  int64_t micro_batch = 1;  // Sequences per forward/backward pass.
  int64_t MicroBatchesPerStep() const { return global_sequences / micro_batch; }
};

// Held-out perplexity every `interval` steps (the forgetting monitor).
struct EvalConfig {
  std::vector<std::string> corpora;  // Empty: no evaluation.
  int64_t interval = 100;            // Steps between evaluations.
  int64_t windows = 64;              // At most this many held-out windows per corpus.
  // The corpora among `corpora` that measure general ability (what must not
  // be forgotten); the others are the domain's. Default: every evaluated
  // corpus that the data mixture does not weight most.
  std::vector<std::string> general;
  bool enabled() const { return !corpora.empty(); }
};

struct CheckpointConfig {
  int64_t interval = 0;  // Steps between checkpoints; 0 = only the final one.
  int64_t keep = 3;      // Checkpoints kept (the newest); >= 1.
};

// The device mesh of a training job (`parallel:`; docs/config.md#parallel):
// world size = dp * tp ranks; TP rank r % tp of replica r / tp. Absent: tp 1
// and dp = the job's world size.
struct ParallelConfig {
  int dp = 0;  // 0: not given (the world size / tp).
  int tp = 1;
  bool zero1 = false;  // Shard optimizer state over the dp group (ZeRO stage 1).
  bool given = false;  // `parallel:` was in the config.
};

enum class Precision { kFp32, kBf16 };
absl::string_view PrecisionName(Precision precision);  // "fp32", "bf16".

struct JobConfig {
  std::string source;      // Where the config came from, as given (for messages).
  std::string model;       // Hugging Face checkpoint directory (resolved).
  std::string output_dir;  // Checkpoints and logs go here (resolved).
  DataConfig data;
  TrainableConfig trainable;
  LoraConfig lora;            // With trainable.mode kLora.
  OptimizerConfig optimizer;  // name, lr (peak), betas, eps, weight decay, clipping.
  ScheduleConfig schedule;    // lr is optimizer.lr.
  BatchConfig batch;
  // Optimizer steps of the run. From `steps`, or from `tokens` as
  // ceil(tokens / batch.global_tokens): the run trains at least `tokens`.
  int64_t steps = 0;
  int64_t tokens = 0;  // `tokens` as written; 0 when `steps` was given.
  EvalConfig eval;
  CheckpointConfig checkpoint;
  ParallelConfig parallel;
  // The compute precision: fp32 on the CPU, bf16 mixed precision on CUDA
  // (docs/config.md#device-and-precision). When `precision:` is absent it
  // follows the device (SetDevice).
  Precision precision = Precision::kFp32;
  bool precision_given = false;
  std::string device = "cpu";  // "cpu" or "cuda:N" (normalized; "cuda" is cuda:0).
  // Activation recomputation of the CUDA backend: "none", "attention" or
  // "full" (model/cuda_llama_train.h); only "none" on the CPU.
  std::string recompute = "none";
  int threads = 0;           // Worker threads; 0 = all cores.
  int64_t log_interval = 1;  // Steps between progress lines / metrics records.
};

// The CUDA device ordinal `device` names: -1 for "cpu", N for "cuda:N" and
// 0 for "cuda". InvalidArgument naming the value otherwise.
absl::StatusOr<int> DeviceOrdinal(absl::string_view device);

// Moves `job` to `device` (a worker's --device overrides the config's) and
// checks what depends on it: precision defaults to fp32 on the CPU and bf16
// on CUDA; an explicit precision or recompute the device cannot run is
// refused, naming the key. Errors are prefixed with job->source.
absl::Status SetDevice(JobConfig* job, absl::string_view device);

// Parses and validates a job config. `source` names it in errors (usually
// the file path). Relative paths (model, output_dir, data.store) are resolved
// against `base_dir` when it is not empty (LoadJobConfig passes the config
// file's directory) and kept as written otherwise.
absl::StatusOr<JobConfig> ParseJobConfig(absl::string_view yaml_text, absl::string_view source,
                                         absl::string_view base_dir = "");

// Reads `path` and parses it with source = path and base_dir = the absolute
// directory holding it (symlinks not resolved). A missing or unreadable file
// is an error naming it.
absl::StatusOr<JobConfig> LoadJobConfig(const std::string& path);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_CONFIG_H_
