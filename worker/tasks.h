// What a worker does with an Assignment (proto/llamapro/v1/workers.proto):
// translates it into engine calls and runs them on the calling thread.
//
//   EXPAND        ExpandCheckpoint with the ExpandJob's fields, defaults as
//                 `llamaproctl expand` (layout interleaved, dtype keep).
//   EVAL          HeldOutPerplexity of the checkpoint over each corpus, read
//                 through `data`; the result maps corpus -> perplexity.
//   PRETRAIN/SFT  RunTraining on the job config (train_config_yaml, relative
//                 paths resolved against the assignment's data_dir; data.store
//                 ignored: samples come from `data`). world_size > 1: a Gloo
//                 communicator bootstrapped through `rendezvous` under the
//                 assignment's rendezvous_prefix; rank 0 alone writes
//                 checkpoints. With `resume`, PlanResume (below) decides on
//                 rank 0 where to start and the ranks agree on it through the
//                 communicator.
//
// Failure codes carry meaning to the coordinator (workers.proto,
// HeartbeatRequest.error_code): every error of a collective, or of joining
// one, is UNAVAILABLE, ABORTED or DEADLINE_EXCEEDED (the attempt is
// restarted); a cancel (`*cancel` set) ends training at the next step
// boundary, evaluation before the next corpus, as CANCELLED; expansion is not
// interruptible. Exceptions escaping the engine are turned into statuses.
//
// Thread-safety: RunAssignment may run on several threads at once (each with
// its own environment); the hooks are called from the calling thread.
#ifndef LLAMAPRO_WORKER_TASKS_H_
#define LLAMAPRO_WORKER_TASKS_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "data/data_source.h"
#include "llamapro/v1/jobs.pb.h"
#include "llamapro/v1/workers.pb.h"
#include "train/communicator.h"

namespace llamapro::worker {

// What a task runs with; nothing here is owned, all of it must outlive the
// call.
struct TaskEnvironment {
  DataSource* data = nullptr;             // The coordinator's token store.
  RendezvousStore* rendezvous = nullptr;  // Needed when world_size > 1.
  std::string device = "cpu";
  int threads = 0;  // > 0 overrides the job config's `threads`; 0: all cores.
  std::string collective_address = "127.0.0.1";  // Where this rank's Gloo listens.
  std::chrono::milliseconds collective_timeout{std::chrono::minutes(5)};
  const std::atomic<bool>* cancel = nullptr;  // May be null.
};

struct TaskHooks {
  std::function<void(absl::string_view)> log;  // One line per call.
  // Applies `update` to the task's latest progress.
  std::function<void(const std::function<void(v1::Progress*)>& update)> progress;
  // Training: seconds of the last step, and training tokens this rank
  // processed since the previous call.
  std::function<void(double step_seconds, int64_t tokens)> steps;
};

struct TaskResult {
  std::map<std::string, double> result;  // EVAL: perplexity by corpus.
};

absl::StatusOr<TaskResult> RunAssignment(const v1::Assignment& assignment,
                                         const TaskEnvironment& environment,
                                         const TaskHooks& hooks);

// Where a restarted training attempt starts, decided from what earlier
// attempts left in the output directory.
struct ResumePlan {
  enum class Mode : int64_t { kFresh = 0, kResume = 1, kFinished = 2 };
  Mode mode = Mode::kFresh;
  std::string checkpoint;  // kResume, kFinished: the checkpoint directory.
  int64_t step = 0;        // Its step.
};

// Makes `output_dir` resumable after a killed attempt and says how to start:
// removes staging directories a killed checkpoint write left behind
// (".checkpoint-*.tmp-*"); when `latest` is missing, unreadable or names an
// incomplete checkpoint, points it at the newest complete checkpoint-* (or
// removes it when there is none); then kResume from it, kFinished when it is
// at `total_steps` or beyond (the run ended but was not reported), kFresh
// when there is no checkpoint at all. Every repair is logged through `log`.
// Errors only for file-system failures, naming the path.
absl::StatusOr<ResumePlan> PlanResume(const std::string& output_dir, int64_t total_steps,
                                      const std::function<void(absl::string_view)>& log);

// Gives `status` a code the coordinator restarts an attempt for: OK,
// UNAVAILABLE, ABORTED and DEADLINE_EXCEEDED stay; anything else becomes
// ABORTED with the same message. For errors of collectives.
absl::Status AsRestartable(const absl::Status& status);

}  // namespace llamapro::worker

#endif  // LLAMAPRO_WORKER_TASKS_H_
