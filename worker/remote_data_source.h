// A DataSource (data/data_source.h) over the coordinator's DataService
// (proto/llamapro/v1/data.proto): what a worker trains and evaluates on. It
// serves exactly the samples a StoreDataSource over the coordinator's token
// store would (the DataService runs data/sampler.h there), minus the fields
// the wire does not carry (Sample::window, epoch and sources stay zero/empty).
//
// Calls. ReadSamples and ReadHeldOut are split into DataService calls of at
// most kMaxSamplesPerCall samples each; every reply is checked (count,
// indices, token and mask lengths) and a malformed one is a DataLoss error.
// A call that fails with UNAVAILABLE (the coordinator restarting, the network
// gone) is repeated, with exponential backoff from 100 ms to 2 s, until it
// succeeds, fails otherwise, `retry_for` has passed since the first failure
// (then the UNAVAILABLE error is returned, naming the coordinator), or
// `*cancel` is set (Cancelled). A partly received stream is read again from
// its first sample. No other code is retried; errors keep the coordinator's
// status code and name the coordinator and the method.
//
// Thread-safety: thread-safe (gRPC channels and stubs are); each call
// blocks its calling thread.
#ifndef LLAMAPRO_WORKER_REMOTE_DATA_SOURCE_H_
#define LLAMAPRO_WORKER_REMOTE_DATA_SOURCE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/data_source.h"
#include "grpcpp/grpcpp.h"
#include "llamapro/v1/data.grpc.pb.h"
#include "rpc/rpc.h"

namespace llamapro::worker {

// Largest `count` of one ReadSamples / ReadHeldOut call (data.proto).
inline constexpr int64_t kMaxSamplesPerCall = 4096;

struct RemoteDataOptions {
  // Address, token and TLS settings; the address also names the coordinator
  // in errors.
  rpc::ConnectionOptions connection;
  // Deadline of one call (a whole stream of up to kMaxSamplesPerCall samples).
  std::chrono::milliseconds call_timeout{std::chrono::minutes(5)};
  // How long UNAVAILABLE is retried, counted from the first failure of a call.
  std::chrono::milliseconds retry_for{std::chrono::seconds(60)};
  // Set by another thread to give up retrying (Cancelled); may be null. Must
  // outlive the source.
  const std::atomic<bool>* cancel = nullptr;
  // Called once per failed attempt that will be retried (may be empty), from
  // the calling thread.
  std::function<void(const absl::Status&)> on_retry;
};

class RemoteDataSource : public DataSource {
 public:
  // `channel` (rpc::MakeChannel) is shared; it may be used by others too.
  RemoteDataSource(const std::shared_ptr<grpc::Channel>& channel, RemoteDataOptions options);

  absl::StatusOr<StoreTokenizer> Tokenizer() override;
  absl::Status ReadSamples(const SamplerOptions& options, int64_t start, int64_t stride,
                           int64_t count, std::vector<Sample>* out) override;
  absl::StatusOr<int64_t> HeldOutWindows(const std::string& corpus, int64_t seq_len) override;
  absl::Status ReadHeldOut(const std::string& corpus, int64_t seq_len, int64_t start, int64_t count,
                           std::vector<Sample>* out) override;

 private:
  // Runs `attempt` (one call, given a prepared context) under the retry
  // policy above; errors are prefixed with the coordinator and `method`.
  absl::Status Call(const char* method,
                    const std::function<grpc::Status(grpc::ClientContext*)>& attempt);

  RemoteDataOptions options_;
  std::unique_ptr<v1::DataService::Stub> stub_;
};

// Decodes one SampleRecord of `seq_len` into `sample` (tokens little-endian
// int32, one mask byte per token). DataLoss naming `what` when a length is
// wrong. Exposed for tests.
absl::Status DecodeSampleRecord(const v1::SampleRecord& record, int64_t seq_len,
                                absl::string_view what, Sample* sample);

}  // namespace llamapro::worker

#endif  // LLAMAPRO_WORKER_REMOTE_DATA_SOURCE_H_
