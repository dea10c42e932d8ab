// The coordinator's state machine: jobs, workers, the rendezvous, and the
// scheduler that connects them (DESIGN.md, The system). The gRPC services
// (coordinator/services.h) are thin translations onto this class; tests drive
// it directly too.
//
// Jobs: PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED. A job waits in
// PENDING for its dependencies and for `world_size` idle workers, then runs
// one *attempt* on all of them at once (gang scheduling: every rank starts in
// the same heartbeat round or none does). An attempt that loses a rank (a
// heartbeat timeout, a worker restart, a peer's collective failing) is
// aborted on every rank, and the job goes back to PENDING to resume from its
// latest checkpoint, at most `max_restarts` times. Every change is persisted
// (JobStore) before it is visible; on a restart the coordinator reloads every
// job and waits one heartbeat timeout for the ranks of running attempts to
// re-register and be adopted.
//
// Workers: register, then heartbeat every heartbeat_interval(); the reply
// carries a new assignment for an idle worker or a cancellation. A worker
// stays busy with an aborted or cancelled attempt until it reports that the
// attempt stopped, so a restarted attempt never overlaps the old one.
//
// Ingest jobs run inside the coordinator (it owns the token store), one at a
// time, on a thread of their own.
//
// Thread-safe: one mutex guards the state; RocksDB writes happen under it.
#ifndef LLAMAPRO_COORDINATOR_COORDINATOR_H_
#define LLAMAPRO_COORDINATOR_COORDINATOR_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/job_store.h"
#include "coordinator/paths.h"
#include "data/store.h"
#include "llamapro/v1/jobs.pb.h"
#include "llamapro/v1/workers.pb.h"

namespace llamapro::coordinator {

struct CoordinatorOptions {
  // A worker silent for this long is lost; its attempt is aborted.
  std::chrono::milliseconds heartbeat_timeout{30000};
  // After a restart of the coordinator, the ranks of a running attempt have
  // heartbeat_timeout + adoption_grace to report back (their reconnect
  // backoff, up to a few seconds, comes on top of the timeout).
  std::chrono::milliseconds adoption_grace{15000};
  int ingest_threads = 0;  // Tokenizing threads of ingest jobs; 0: all cores.
};

// What the metrics exporter reads (coordinator/metrics.h).
struct JobMetricsView {
  std::string id, name, kind;
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  int32_t restarts = 0;
  v1::Progress progress;
};
struct EvalResultView {
  std::string id, name, task;
  std::map<std::string, double> result;
};
struct MetricsSnapshot {
  std::map<v1::JobState, int64_t> jobs_by_state;
  std::map<v1::WorkerState, int64_t> workers_by_state;
  std::vector<JobMetricsView> running;              // RUNNING jobs only (bounded label sets).
  int64_t restarts_total = 0;                       // Over every job.
  std::map<std::string, double> worker_peak_flops;  // By worker name.
  std::vector<EvalResultView> evals;  // Newest succeeded eval jobs first (at most 100).
};

class Coordinator {
 public:
  // `store` must have been opened with JobStoreFamilies() and outlive this.
  // Loads every job; RUNNING attempts wait one heartbeat timeout for their
  // ranks to re-register.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(TokenStore* store, PathPolicy paths,
                                                             CoordinatorOptions options);
  // Cancels a running ingest and waits for its thread.
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // --- JobService. Errors are InvalidArgument naming the request field,
  // NotFound for unknown jobs, AlreadyExists for a reused request id with a
  // different spec.
  absl::StatusOr<v1::Job> Submit(const v1::SubmitJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(absl::string_view id) const;
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request) const;
  // Cancelling a terminal job returns it unchanged.
  absl::StatusOr<v1::Job> Cancel(absl::string_view id);
  // The events after `after_sequence` (in order) and whether the job is
  // terminal, so no event will follow them: what a watcher sends next.
  absl::Status EventsAfter(absl::string_view id, int64_t after_sequence,
                           std::vector<v1::JobEvent>* events, bool* terminal) const;

  // --- WorkerService.
  absl::StatusOr<v1::RegisterResponse> Register(const v1::RegisterRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  v1::ListWorkersResponse ListWorkers() const;

  // --- RendezvousService. Keys of an attempt are dropped when it ends.
  absl::Status RendezvousSet(const std::string& key, std::string value);
  absl::StatusOr<std::vector<std::string>> RendezvousWait(const std::vector<std::string>& keys,
                                                          std::chrono::milliseconds timeout,
                                                          const std::function<bool()>& stop);

  // Marks silent workers lost (aborting what they ran), gives up on ranks
  // that did not come back after a restart, and schedules. The server calls
  // it a few times per heartbeat interval.
  void Tick();

  MetricsSnapshot Snapshot() const;
  std::chrono::milliseconds heartbeat_interval() const { return heartbeat_interval_; }
  const PathPolicy& paths() const { return paths_; }

 private:
  using Clock = std::chrono::steady_clock;

  struct JobEntry {
    uint64_t number = 0;
    v1::Job job;
    std::vector<v1::JobEvent> events;
    std::string output_dir;       // Where it writes (conflict checks); may be empty.
    std::vector<bool> rank_done;  // Ranks of the current attempt that succeeded.
    std::optional<Clock::time_point> adopt_deadline;  // After a coordinator restart.
    Clock::time_point last_progress_event{};
    std::shared_ptr<std::atomic<bool>> ingest_cancel;  // INGEST while running.
  };

  struct WorkerEntry {
    std::string id;  // This incarnation's worker_id.
    v1::RegisterRequest info;
    bool lost = false;
    Clock::time_point last_heartbeat;
    // The attempt it runs, or was told to stop and has not confirmed yet.
    std::string job_id;
    int32_t attempt = 0;
    int32_t rank = 0;
    bool started = false;  // It reported RUNNING for it.
    std::map<std::string, double> metrics;
  };

  Coordinator(TokenStore* store, PathPolicy paths, CoordinatorOptions options);
  absl::Status Load();

  // Everything below runs with mutex_ held.
  absl::StatusOr<v1::JobSpec> ValidateSpec(const v1::JobSpec& spec, std::string* output_dir,
                                           std::vector<std::string>* notes) const;
  absl::StatusOr<JobEntry*> Find(absl::string_view id) const;
  // Appends an event (state_change when `state_change`, else log) and
  // persists the job with it.
  absl::Status Record(JobEntry* entry, const std::string& text, bool state_change);
  absl::Status RecordProgress(JobEntry* entry);
  void SetTerminal(JobEntry* entry, v1::JobState state, const std::string& why);
  // Aborts the current attempt on every rank; the job restarts (PENDING) or,
  // past max_restarts, fails.
  void AbortAttempt(JobEntry* entry, const std::string& why);
  void ReleaseRendezvous(const v1::Job& job);
  void OnRankFinished(JobEntry* entry, WorkerEntry* worker, const v1::HeartbeatRequest& request);
  // Stores rank 0's progress report: keeps the initial perplexities across
  // reports and attempts, and derives the MFU from the workers' peaks.
  void TakeProgress(JobEntry* entry, const v1::Progress& reported);
  bool AttemptIsCurrent(const WorkerEntry& worker) const;
  v1::Assignment MakeAssignment(const JobEntry& entry, int32_t rank) const;
  void Schedule();
  // Orders *idle so that its first world_size workers are the job's ranks:
  // under tensor parallelism each TP group on one host when possible.
  // Returns a note for the job's event ("" when there is nothing to say).
  std::string PlaceRanks(const v1::JobSpec& spec, std::vector<WorkerEntry*>* idle);
  // "cpu" or "cuda": the kind of worker a training job's config asks for
  // (`device`); "" for other jobs and unparsable configs (any worker).
  std::string DeviceKind(const v1::JobSpec& spec) const;
  static std::string DeviceKindOf(const std::string& device);
  void StartIngest(JobEntry* entry);
  void FinishIngest(uint64_t number, int32_t attempt, const absl::Status& status,
                    const std::map<std::string, double>& result);
  void Persist(JobEntry* entry, bool sync);
  WorkerEntry* FindWorkerById(absl::string_view id);

  TokenStore* store_;
  PathPolicy paths_;
  CoordinatorOptions options_;
  std::chrono::milliseconds heartbeat_interval_;
  std::unique_ptr<JobStore> job_store_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;  // Any job event or rendezvous key.
  std::map<uint64_t, std::unique_ptr<JobEntry>> jobs_;
  std::map<std::string, uint64_t> requests_;  // request_id -> job number.
  uint64_t next_number_ = 1;
  std::map<std::string, std::unique_ptr<WorkerEntry>> workers_;  // By name.
  std::map<std::string, std::string> rendezvous_;
  bool ingest_running_ = false;
  bool shutting_down_ = false;  // Set by the destructor.
  std::thread ingest_thread_;
  std::thread retired_ingest_thread_;  // See StartIngest.
};

// "job-42" <-> 42.
std::string JobId(uint64_t number);
absl::StatusOr<uint64_t> ParseJobId(absl::string_view field, absl::string_view id);
bool IsTerminal(v1::JobState state);

}  // namespace llamapro::coordinator

#endif  // LLAMAPRO_COORDINATOR_COORDINATOR_H_
