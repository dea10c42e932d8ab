// The worker's side of the coordinator protocol (proto/llamapro/v1/
// workers.proto; docs/worker.md): register, heartbeat, run what is assigned
// on a task thread, obey cancels, survive a coordinator restart.
//
//   * Register(name, device, host, pid, metrics address, and the task still
//     held, if any, in running_*) -> worker id and heartbeat interval.
//   * Every interval: Heartbeat with IDLE, RUNNING + the latest progress, or
//     the task's end (SUCCEEDED / FAILED with message and error code /
//     CANCELLED, plus the EVAL result). An end is repeated until a Heartbeat
//     carrying it succeeds (an OK reply without `reregister`); only then is
//     the task dropped and IDLE reported. A heartbeat is also sent as soon as
//     a task ends.
//   * A reply with `reregister` (or NOT_FOUND) -> Register again, reporting
//     the task held. `cancel_job_id/attempt` naming the task -> its cancel
//     flag is set (training stops at the next step boundary) and it ends as
//     CANCELLED (SUCCEEDED if it finished first). An `assignment` while idle
//     -> a task thread runs it (worker/tasks.h); one while busy is logged and
//     ignored.
//   * Coordinator unreachable: the task keeps running; calls are retried with
//     backoff from 100 ms to `max_backoff`, logging the first failure, then
//     at most every 30 s, and the recovery.
//   * Stop (the stop token): the running task is cancelled and waited for (at
//     most `shutdown_grace`), then reported as FAILED with UNAVAILABLE
//     ("worker shutting down"), so the coordinator reschedules the attempt;
//     a task that ended on its own first is reported as it ended. The report
//     is tried for a few seconds; then Run returns.
//
// Thread-safety: Run is called once, from one thread; it starts at most one
// task thread at a time and joins it before returning, except when the task
// did not stop within `shutdown_grace` (task_running() is then true and the
// process should exit without destroying the agent: its destructor would
// wait for the task).
#ifndef LLAMAPRO_WORKER_AGENT_H_
#define LLAMAPRO_WORKER_AGENT_H_

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"
#include "llamapro/v1/workers.grpc.pb.h"
#include "rpc/rpc.h"
#include "worker/metrics.h"
#include "worker/rendezvous_client.h"

namespace llamapro::worker {

struct WorkerOptions {
  rpc::ConnectionOptions coordinator;
  std::string name;  // Required; unique per worker.
  std::string device = "cpu";
  std::string host;                              // Empty: this machine's host name.
  std::string metrics_address;                   // Reported in Register; empty: none.
  double peak_flops = 0;                         // Reported in Register; 0: unknown.
  std::string collective_address = "127.0.0.1";  // Where peers reach this worker's Gloo.
  std::chrono::milliseconds collective_timeout{std::chrono::minutes(5)};
  int threads = 0;  // > 0 overrides a job's `threads`; 0: all cores.
  std::chrono::milliseconds rpc_timeout{std::chrono::seconds(10)};  // Register / Heartbeat.
  std::chrono::milliseconds max_backoff{std::chrono::seconds(2)};
  std::chrono::milliseconds shutdown_grace{std::chrono::seconds(20)};
  // How long a task's DataService calls retry UNAVAILABLE.
  std::chrono::milliseconds data_retry_for{std::chrono::seconds(60)};
  WorkerMetrics* metrics = nullptr;  // Not owned; may be null.
  // Receives each log line (no newline). Null: stderr, prefixed with the UTC
  // time and the worker name. Called from the agent's threads.
  std::function<void(absl::string_view)> log;
  // Called after each successful Register with the worker id (may be null).
  std::function<void(const std::string& worker_id)> on_registered;
};

class WorkerAgent {
 public:
  // Fails on missing options or unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<WorkerAgent>> Create(WorkerOptions options);
  ~WorkerAgent();
  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;

  // Runs the protocol until `stop` is requested, then shuts down as above
  // and returns OK. Returns an error only when the first Register is refused
  // for good (UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT,
  // UNIMPLEMENTED: a misconfigured worker), naming the coordinator.
  absl::Status Run(const std::stop_token& stop);

  // True when a task thread is still running (after Run returned: it did not
  // stop within shutdown_grace).
  bool task_running() const;

 private:
  struct Task;
  explicit WorkerAgent(WorkerOptions options);

  void Log(absl::string_view line) const;
  // Register until it succeeds; false when stopped first. `fatal` gets a
  // refusal that retrying cannot fix (only checked when non-null).
  bool Register(absl::Status* fatal);
  // One Heartbeat call reporting the current state. Sets `*delivered_end`
  // when it delivered the end of the task (which is then dropped).
  grpc::Status Heartbeat(v1::HeartbeatResponse* response, bool* delivered_end);
  void HandleResponse(const v1::HeartbeatResponse& response);
  void StartTask(const v1::Assignment& assignment);
  void RunTask(Task* task);
  void Shutdown();
  // Waits until `until`, a wake-up, or stop; true when stopping.
  bool WaitUntil(std::chrono::steady_clock::time_point until);
  // Rate-limited logging of an unreachable coordinator.
  void NoteFailure(absl::string_view call, const grpc::Status& status);
  void NoteSuccess();

  const WorkerOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::unique_ptr<GrpcRendezvousStore> rendezvous_;

  mutable std::mutex mutex_;
  std::condition_variable wake_cv_;
  bool wake_ = false;      // A task ended, or stop was requested.
  bool stopping_ = false;  // Stop was requested.
  std::unique_ptr<Task> task_;
  std::string worker_id_;
  std::chrono::milliseconds interval_{1000};
  double last_step_seconds_ = 0;

  // Only touched by the Run thread.
  std::chrono::steady_clock::time_point failing_since_{};
  std::chrono::steady_clock::time_point last_failure_log_{};
  bool failing_ = false;
};

}  // namespace llamapro::worker

#endif  // LLAMAPRO_WORKER_AGENT_H_
