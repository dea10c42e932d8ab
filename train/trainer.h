// The training loop: what `llamaproctl train` runs embedded, and what a
// worker will run for a job. Loads the model, marks what trains, reads
// samples from the token store, accumulates gradients over micro-batches,
// clips, steps the optimizer on the schedule, evaluates held-out perplexity
// (the forgetting monitor), logs metrics and writes checkpoints. A run is a
// pure function of its config and inputs: resuming from a checkpoint
// continues exactly as the uninterrupted run would have.
#ifndef LLAMAPRO_TRAIN_TRAINER_H_
#define LLAMAPRO_TRAIN_TRAINER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/data_source.h"
#include "eval/ppl.h"
#include "model/llama_train.h"
#include "train/communicator.h"
#include "train/config.h"
#include "train/parallel_plan.h"

namespace llamapro {

class NcclCommunicator;  // train/nccl_communicator.h (CUDA builds).

struct TrainProgress {
  int64_t step = 0;  // Steps completed.
  int64_t total_steps = 0;
  double loss = 0;
  double learning_rate = 0;
  double grad_norm = 0;          // Before clipping.
  int64_t tokens = 0;            // Consumed so far.
  double tokens_per_second = 0;  // Of the last step.
  double seconds = 0;            // Since this invocation started.
  double eta_seconds = 0;
};

struct EvalReport {
  int64_t step = 0;
  std::vector<PerplexityResult> results;
};

// What the run is about to do, reported once before the first step.
struct TrainPlan {
  int64_t total_parameters = 0;
  int64_t trainable_parameters = 0;
  std::vector<std::string> trainable_blocks;  // Human-readable ("4, 9, 14" or "all").
  int64_t optimizer_state_bytes = 0;
  uint64_t activation_bytes = 0;
  FlopCount flops_per_token;
  int64_t start_step = 0;
  int64_t total_steps = 0;
  bool resumed = false;
  std::string resumed_from;
  std::string blas;  // The GEMM library in use (CPU backend).
  int shards = 1;    // Threads each micro-batch is split over (CPU backend).
  // CUDA backend: the device, what the run holds on it (weights, masters,
  // gradients, activations, scratch, optimizer state) and the recompute mode.
  std::string device;
  int64_t device_bytes = 0;
  std::string recompute;
  // The mesh (parallel:) and this rank's share: parameters it holds, and
  // the planner's bytes and communication per step (train/parallel_plan.h).
  // optimizer_state_bytes and activation_bytes above are this rank's, as
  // allocated.
  int dp = 1, tp = 1;
  bool zero1 = false;
  int64_t rank_parameters = 0;
  ParallelPlan rank_plan;
};

struct TrainOptions {
  bool resume = false;           // Continue from output_dir/latest.
  int64_t stop_after_steps = 0;  // > 0: checkpoint and stop after this many steps here.
  std::function<void(const TrainPlan&)> on_plan;
  std::function<void(const TrainProgress&)> on_step;  // Every log_interval steps.
  std::function<void(const EvalReport&)> on_eval;
  std::function<void(absl::string_view)> on_checkpoint;  // Directory written.
  // Data parallelism: the ranks of one job, each running RunTraining with the
  // same config. Null: a single local rank.
  Communicator* communicator = nullptr;
  // Tensor parallelism (parallel.tp > 1): this rank's TP and DP group
  // communicators (MakeGlooMesh). Unused, and may be null, when tp is 1.
  Communicator* tp_communicator = nullptr;
  Communicator* dp_communicator = nullptr;
  // CUDA data parallelism (device: cuda:N, several ranks): the job's ranks
  // over NCCL, for the gradients; `communicator` still carries the host-side
  // collectives (targets, loss, barriers). Null: one rank.
  NcclCommunicator* nccl = nullptr;
  // Where samples come from. Null: the token store named by data.store.
  DataSource* data = nullptr;
  // Set by another thread to stop at the next step boundary (every rank
  // stops at the same step; no checkpoint is written). The run then returns
  // a Cancelled status.
  const std::atomic<bool>* cancel = nullptr;
};

struct TrainSummary {
  int64_t steps_run = 0;
  int64_t final_step = 0;
  double final_loss = 0;
  std::string last_checkpoint;
  double tokens_per_second = 0;  // Mean over the steps of this invocation.
};

// "CPU, 4 threads per micro-batch; GEMMs: OpenBLAS ..." or "CUDA <device>,
// bf16 mixed precision, recompute none; 61.2 GiB allocated on the device".
std::string DescribeCompute(const TrainPlan& plan);

// With several ranks, rank 0 alone writes checkpoints and metrics; the ranks
// of replica 0 run evaluations (its TP group together); every rank must run
// with the same config and resume flag. Under tensor parallelism or ZeRO-1
// the trainable tensors and their optimizer state are gathered onto rank 0
// for each checkpoint, which is then an ordinary one: any dp and tp resume
// from it.
// Errors name the config key, file or corpus at fault: a model without
// llamapro.json under `trainable: expanded`, layers out of range, a corpus
// missing from the store, a store tokenized with another tokenizer than the
// model's, seq_len beyond the model's context, an output_dir that already
// holds checkpoints without --resume, a resume with different data settings.
absl::StatusOr<TrainSummary> RunTraining(const JobConfig& config, const TrainOptions& options);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_TRAINER_H_
