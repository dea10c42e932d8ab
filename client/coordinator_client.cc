#include "client/coordinator_client.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"

namespace llamapro::client {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kFirstBackoff{100};
constexpr std::chrono::milliseconds kMaxBackoff{2000};

std::string Seconds(std::chrono::milliseconds duration) {
  return absl::StrCat(static_cast<double>(duration.count()) / 1000.0, " s");
}

}  // namespace

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

absl::StatusOr<std::unique_ptr<CoordinatorClient>> CoordinatorClient::Create(
    ClientOptions options) {
  LP_ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, rpc::MakeChannel(options.connection));
  return std::unique_ptr<CoordinatorClient>(new CoordinatorClient(std::move(options), channel));
}

CoordinatorClient::CoordinatorClient(ClientOptions options,
                                     const std::shared_ptr<grpc::Channel>& channel)
    : options_(std::move(options)),
      jobs_(v1::JobService::NewStub(channel)),
      workers_(v1::WorkerService::NewStub(channel)) {}

absl::Status CoordinatorClient::Error(const char* method, const grpc::Status& status) const {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat("coordinator ", options_.connection.address, ": ", method, ": ",
                                   status.error_message()));
}

absl::Status CoordinatorClient::Call(
    const char* method, bool repeatable,
    const std::function<grpc::Status(grpc::ClientContext*)>& call) const {
  const Clock::time_point give_up = Clock::now() + options_.retry_for;
  std::chrono::milliseconds backoff = kFirstBackoff;
  for (;;) {
    grpc::ClientContext context;
    rpc::PrepareContext(&context, options_.connection, options_.call_timeout);
    const grpc::Status status = call(&context);
    if (status.ok()) return absl::OkStatus();
    if (!repeatable || status.error_code() != grpc::StatusCode::UNAVAILABLE ||
        Clock::now() + backoff > give_up) {
      absl::Status error = Error(method, status);
      if (repeatable && status.error_code() == grpc::StatusCode::UNAVAILABLE &&
          options_.retry_for.count() > 0) {
        return absl::Status(error.code(), absl::StrCat(error.message(), " (retried for ",
                                                       Seconds(options_.retry_for), ")"));
      }
      return error;
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

absl::StatusOr<v1::Job> CoordinatorClient::SubmitJob(const v1::SubmitJobRequest& request) const {
  v1::Job job;
  LP_RETURN_IF_ERROR(
      Call("SubmitJob", !request.request_id().empty(),
           [&](grpc::ClientContext* context) { return jobs_->SubmitJob(context, request, &job); }));
  return job;
}

absl::StatusOr<v1::Job> CoordinatorClient::GetJob(const std::string& id) const {
  v1::GetJobRequest request;
  request.set_id(id);
  v1::Job job;
  LP_RETURN_IF_ERROR(Call("GetJob", true, [&](grpc::ClientContext* context) {
    return jobs_->GetJob(context, request, &job);
  }));
  return job;
}

absl::StatusOr<v1::ListJobsResponse> CoordinatorClient::ListJobs(
    const v1::ListJobsRequest& request) const {
  v1::ListJobsResponse response;
  LP_RETURN_IF_ERROR(Call("ListJobs", true, [&](grpc::ClientContext* context) {
    return jobs_->ListJobs(context, request, &response);
  }));
  return response;
}

absl::StatusOr<v1::Job> CoordinatorClient::CancelJob(const std::string& id) const {
  v1::CancelJobRequest request;
  request.set_id(id);
  v1::Job job;
  LP_RETURN_IF_ERROR(Call("CancelJob", true, [&](grpc::ClientContext* context) {
    return jobs_->CancelJob(context, request, &job);
  }));
  return job;
}

absl::StatusOr<v1::ListWorkersResponse> CoordinatorClient::ListWorkers() const {
  v1::ListWorkersRequest request;
  v1::ListWorkersResponse response;
  LP_RETURN_IF_ERROR(Call("ListWorkers", true, [&](grpc::ClientContext* context) {
    return workers_->ListWorkers(context, request, &response);
  }));
  return response;
}

absl::StatusOr<v1::Job> CoordinatorClient::WatchJob(
    const std::string& id, int64_t after_sequence,
    const std::function<void(const v1::JobEvent&)>& on_event,
    const std::function<void(const absl::Status&)>& on_break) const {
  int64_t last_sequence = after_sequence;
  bool broken = false;  // Reconnecting, since `broken_since`.
  Clock::time_point broken_since;
  std::chrono::milliseconds backoff = kFirstBackoff;
  for (;;) {
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_after_sequence(last_sequence);
    grpc::ClientContext context;
    // No deadline: a watch lasts as long as the job.
    rpc::PrepareContext(&context, options_.connection, std::chrono::milliseconds(0));
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader = jobs_->WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      // A coordinator honours after_sequence; this guards the exactly-once
      // promise should one replay anyway.
      if (event.sequence() <= last_sequence) continue;
      last_sequence = event.sequence();
      broken = false;
      backoff = kFirstBackoff;
      on_event(event);
    }
    const grpc::Status status = reader->Finish();
    absl::Status why;
    if (status.ok()) {
      // The stream ends when the job does; the job as it ended carries the
      // final message and result.
      LP_ASSIGN_OR_RETURN(v1::Job job, GetJob(id));
      if (IsTerminal(job.state())) return job;
      why = absl::UnavailableError(absl::StrCat("coordinator ", options_.connection.address,
                                                ": WatchJob: the stream ended while job ", id,
                                                " is still ", v1::JobState_Name(job.state())));
    } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      why = Error("WatchJob", status);
    } else {
      return Error("WatchJob", status);
    }
    const Clock::time_point now = Clock::now();
    if (!broken) {
      broken = true;
      broken_since = now;
      if (on_break) on_break(why);
    }
    if (now + backoff > broken_since + options_.retry_for) {
      return absl::Status(why.code(), absl::StrCat(why.message(), " (reconnecting for ",
                                                   Seconds(options_.retry_for), " after event ",
                                                   last_sequence, " failed)"));
    }
    std::this_thread::sleep_for(backoff);
    backoff = std::min(backoff * 2, kMaxBackoff);
  }
}

}  // namespace llamapro::client
