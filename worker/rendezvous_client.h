// A RendezvousStore (train/communicator.h) over the coordinator's
// RendezvousService (proto/llamapro/v1/workers.proto): how the ranks of a
// job find each other's Gloo (later NCCL) endpoints.
//
// Set is retried while the coordinator answers UNAVAILABLE, for up to
// `retry_for`. Wait(keys, timeout) waits on the coordinator (timeout_ms, in
// calls of at most 600 s each), so no polling happens here; UNAVAILABLE is
// retried until the timeout. A timeout is DeadlineExceeded naming the
// missing keys (the coordinator's message when it has one). Errors keep the
// coordinator's status code and name the coordinator and the method.
//
// Thread-safety: thread-safe; each call blocks its calling thread.
#ifndef LLAMAPRO_WORKER_RENDEZVOUS_CLIENT_H_
#define LLAMAPRO_WORKER_RENDEZVOUS_CLIENT_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"
#include "llamapro/v1/workers.grpc.pb.h"
#include "rpc/rpc.h"
#include "train/communicator.h"

namespace llamapro::worker {

// Longest wait of one RendezvousService.Wait call (workers.proto).
inline constexpr std::chrono::milliseconds kMaxRendezvousWait{600'000};

struct RendezvousClientOptions {
  rpc::ConnectionOptions connection;
  // Deadline of a Set call, and how long Set retries UNAVAILABLE.
  std::chrono::milliseconds call_timeout{std::chrono::seconds(30)};
  std::chrono::milliseconds retry_for{std::chrono::seconds(60)};
};

class GrpcRendezvousStore : public RendezvousStore {
 public:
  // `channel` (rpc::MakeChannel) is shared; it may be used by others too.
  GrpcRendezvousStore(const std::shared_ptr<grpc::Channel>& channel,
                      RendezvousClientOptions options);

  absl::Status Set(absl::string_view key, absl::string_view value) override;
  // A zero timeout asks whether the keys exist now (sent as 1 ms: the
  // coordinator might read 0 as "unset").
  absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                std::chrono::milliseconds timeout) override;

 private:
  RendezvousClientOptions options_;
  std::unique_ptr<v1::RendezvousService::Stub> stub_;
};

}  // namespace llamapro::worker

#endif  // LLAMAPRO_WORKER_RENDEZVOUS_CLIENT_H_
