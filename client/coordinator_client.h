// A small C++ client of the coordinator (proto/llamapro/v1/jobs.proto,
// workers.proto): the JobService and WorkerService stubs behind absl::Status
// results, with retries where repeating a call is safe.
//
// Retries. A call that may be repeated without changing the outcome (GetJob,
// ListJobs, CancelJob, ListWorkers, and SubmitJob when its request carries a
// request_id, which makes the coordinator return the job the first attempt
// created) is retried while it fails with UNAVAILABLE (coordinator down,
// restarting or unreachable), with exponential backoff from 100 ms to 2 s,
// for up to `retry_for`. No other code is retried; a SubmitJob without a
// request_id is never retried (it could create a second job).
//
// Errors keep the gRPC status code and name the coordinator and the method:
//   "coordinator 127.0.0.1:50051: GetJob: job 'x' not found".
//
// Thread-safety: a CoordinatorClient is thread-safe (the gRPC channel and
// stubs are); each call blocks its calling thread.
#ifndef LLAMAPRO_CLIENT_COORDINATOR_CLIENT_H_
#define LLAMAPRO_CLIENT_COORDINATOR_CLIENT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "llamapro/v1/jobs.grpc.pb.h"
#include "llamapro/v1/workers.grpc.pb.h"
#include "rpc/rpc.h"

namespace llamapro::client {

struct ClientOptions {
  rpc::ConnectionOptions connection;
  // Deadline of each unary call attempt (streams have none).
  std::chrono::milliseconds call_timeout{30'000};
  // How long a repeatable call keeps retrying UNAVAILABLE, and how long
  // WatchJob keeps reopening a broken stream (counted from the break; any
  // event received starts the count again). Zero: one attempt.
  std::chrono::milliseconds retry_for{60'000};
};

// True for SUCCEEDED, FAILED and CANCELLED.
bool IsTerminal(v1::JobState state);

class CoordinatorClient {
 public:
  // Makes the channel (it connects on the first call, so this does not check
  // that the coordinator is up). Fails only when a TLS file cannot be read.
  static absl::StatusOr<std::unique_ptr<CoordinatorClient>> Create(ClientOptions options);

  const ClientOptions& options() const { return options_; }

  // Retried (see above) only when request.request_id() is not empty.
  absl::StatusOr<v1::Job> SubmitJob(const v1::SubmitJobRequest& request) const;
  absl::StatusOr<v1::Job> GetJob(const std::string& id) const;
  // One page; the caller follows next_page_token.
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request) const;
  // Retried: cancelling twice has the effect of cancelling once (assumed of
  // the coordinator: a finished job is returned as it is).
  absl::StatusOr<v1::Job> CancelJob(const std::string& id) const;
  absl::StatusOr<v1::ListWorkersResponse> ListWorkers() const;

  // Calls `on_event` with each event of job `id` after sequence
  // `after_sequence` (0: from the first), in order and each exactly once,
  // until the job is in a terminal state; returns the job as GetJob reports
  // it then. When the stream breaks with UNAVAILABLE, or ends while the job
  // is not terminal, it is reopened after the last sequence seen (so no
  // event repeats), for up to `retry_for` from the break; `on_break` (may be
  // empty) is called once per break with the reason. Any other error ends
  // the watch and is returned. `on_event` runs on the calling thread.
  absl::StatusOr<v1::Job> WatchJob(
      const std::string& id, int64_t after_sequence,
      const std::function<void(const v1::JobEvent&)>& on_event,
      const std::function<void(const absl::Status&)>& on_break = nullptr) const;

 private:
  CoordinatorClient(ClientOptions options, const std::shared_ptr<grpc::Channel>& channel);

  // Runs `call` (one attempt, given a prepared context) until it succeeds,
  // fails with a code other than UNAVAILABLE, or (when `repeatable`) the
  // retry time is spent. The error names the coordinator and `method`.
  absl::Status Call(const char* method, bool repeatable,
                    const std::function<grpc::Status(grpc::ClientContext*)>& call) const;
  absl::Status Error(const char* method, const grpc::Status& status) const;

  ClientOptions options_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

}  // namespace llamapro::client

#endif  // LLAMAPRO_CLIENT_COORDINATOR_CLIENT_H_
