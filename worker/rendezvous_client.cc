#include "worker/rendezvous_client.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace llamapro::worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kMaxBackoff{2000};
// Extra time the client gives a Wait call beyond the wait itself, so the
// coordinator's own DEADLINE_EXCEEDED (naming the missing keys) arrives first.
constexpr milliseconds kWaitGrace{10'000};

milliseconds Remaining(Clock::time_point deadline) {
  return std::max(milliseconds(0),
                  std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
}

std::string QuotedKeys(const std::vector<std::string>& keys) {
  std::vector<std::string> quoted;
  quoted.reserve(keys.size());
  for (const std::string& key : keys)
    quoted.push_back(absl::StrCat("\"", absl::CHexEscape(key), "\""));
  return absl::StrJoin(quoted, ", ");
}

}  // namespace

GrpcRendezvousStore::GrpcRendezvousStore(const std::shared_ptr<grpc::Channel>& channel,
                                         RendezvousClientOptions options)
    : options_(std::move(options)), stub_(v1::RendezvousService::NewStub(channel)) {}

absl::Status GrpcRendezvousStore::Set(absl::string_view key, absl::string_view value) {
  v1::RendezvousSetRequest request;
  request.set_key(std::string(key));
  request.set_value(std::string(value));
  const Clock::time_point give_up = Clock::now() + options_.retry_for;
  milliseconds backoff = kFirstBackoff;
  while (true) {
    grpc::ClientContext context;
    rpc::PrepareContext(&context, options_.connection, options_.call_timeout);
    v1::RendezvousSetResponse response;
    const grpc::Status status = stub_->Set(&context, request, &response);
    if (status.ok()) return absl::OkStatus();
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE || Clock::now() + backoff > give_up) {
      return absl::Status(
          static_cast<absl::StatusCode>(status.error_code()),
          absl::StrCat("coordinator ", options_.connection.address, ": rendezvous Set of key \"",
                       absl::CHexEscape(key), "\": ", status.error_message()));
    }
    std::this_thread::sleep_for(backoff);  // Backoff before a retry.
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

absl::StatusOr<std::vector<std::string>> GrpcRendezvousStore::Wait(
    const std::vector<std::string>& keys, milliseconds timeout) {
  const Clock::time_point deadline = Clock::now() + std::max(timeout, milliseconds(0));
  v1::RendezvousWaitRequest request;
  for (const std::string& key : keys) request.add_keys(key);
  milliseconds backoff = kFirstBackoff;
  while (true) {
    const milliseconds wait = std::clamp(Remaining(deadline), milliseconds(1), kMaxRendezvousWait);
    request.set_timeout_ms(wait.count());
    grpc::ClientContext context;
    rpc::PrepareContext(&context, options_.connection, wait + kWaitGrace);
    v1::RendezvousWaitResponse response;
    const grpc::Status status = stub_->Wait(&context, request, &response);
    if (status.ok()) {
      if (static_cast<size_t>(response.values_size()) != keys.size()) {
        return absl::DataLossError(
            absl::StrCat("coordinator ", options_.connection.address, ": rendezvous Wait returned ",
                         response.values_size(), " values for ", keys.size(), " keys"));
      }
      return std::vector<std::string>(response.values().begin(), response.values().end());
    }
    const std::string prefix =
        absl::StrCat("coordinator ", options_.connection.address, ": rendezvous Wait: ");
    switch (status.error_code()) {
      case grpc::StatusCode::DEADLINE_EXCEEDED:
        if (Remaining(deadline) > milliseconds(0)) continue;  // A wait longer than one call.
        // The coordinator's message names the missing keys; the client's
        // own deadline (a coordinator that never answered) does not.
        if (absl::StrContains(status.error_message(), "\"") ||
            absl::StrContains(status.error_message(), "key")) {
          return absl::DeadlineExceededError(absl::StrCat(prefix, status.error_message()));
        }
        return absl::DeadlineExceededError(absl::StrCat(prefix, "timed out after ", timeout.count(),
                                                        " ms waiting for key(s) among ",
                                                        QuotedKeys(keys)));
      case grpc::StatusCode::UNAVAILABLE:
        if (Remaining(deadline) > backoff) {
          std::this_thread::sleep_for(backoff);  // Backoff before a retry.
          backoff = std::min(backoff * 2, kMaxBackoff);
          continue;
        }
        [[fallthrough]];
      default:
        return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                            absl::StrCat(prefix, status.error_message()));
    }
  }
}

}  // namespace llamapro::worker
