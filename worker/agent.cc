#include "worker/agent.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <map>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "rpc/rpc.h"
#include "worker/remote_data_source.h"
#include "worker/tasks.h"

namespace llamapro::worker {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kFirstBackoff{100};
constexpr milliseconds kDefaultInterval{1000};
// Between "still unreachable" lines, and between a task's data retry lines.
constexpr std::chrono::seconds kFailureLogEvery{30};
constexpr std::chrono::seconds kRetryLogEvery{10};
// How long a stopping worker tries to report its task.
constexpr milliseconds kShutdownReportFor{5000};

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string Describe(const grpc::Status& status) {
  return absl::StrCat(CodeName(status.error_code()), ": ", status.error_message());
}

const char* OutcomeName(v1::TaskStatus status) {
  switch (status) {
    case v1::TASK_STATUS_SUCCEEDED:
      return "succeeded";
    case v1::TASK_STATUS_CANCELLED:
      return "cancelled";
    default:
      return "failed";
  }
}

}  // namespace

struct WorkerAgent::Task {
  v1::Assignment assignment;
  std::atomic<bool> cancel{false};
  std::unique_ptr<RemoteDataSource> data;
  std::thread thread;
  Clock::time_point started = Clock::now();
  // Guarded by the agent's mutex_.
  bool cancel_requested = false;  // By the coordinator.
  bool finished = false;
  v1::TaskStatus status = v1::TASK_STATUS_RUNNING;
  std::string message;
  int error_code = 0;
  v1::Progress progress;
  std::map<std::string, double> result;

  std::string Name() const {
    return absl::StrCat("job ", assignment.job_id(), " attempt ", assignment.attempt());
  }
};

absl::StatusOr<std::unique_ptr<WorkerAgent>> WorkerAgent::Create(WorkerOptions options) {
  if (options.name.empty()) return absl::InvalidArgumentError("a worker needs a name");
  if (options.device.empty()) return absl::InvalidArgumentError("a worker needs a device");
  if (options.host.empty()) options.host = HostName();
  auto agent = std::unique_ptr<WorkerAgent>(new WorkerAgent(std::move(options)));
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      rpc::MakeChannel(agent->options_.coordinator);
  if (!channel.ok()) return channel.status();
  agent->channel_ = *std::move(channel);
  agent->stub_ = v1::WorkerService::NewStub(agent->channel_);
  agent->rendezvous_ = std::make_unique<GrpcRendezvousStore>(
      agent->channel_, RendezvousClientOptions{.connection = agent->options_.coordinator});
  return agent;
}

WorkerAgent::WorkerAgent(WorkerOptions options) : options_(std::move(options)) {}

WorkerAgent::~WorkerAgent() {
  std::unique_ptr<Task> task;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    task = std::move(task_);
  }
  if (task != nullptr && task->thread.joinable()) {
    task->cancel = true;
    task->thread.join();
  }
}

bool WorkerAgent::task_running() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return task_ != nullptr && !task_->finished;
}

void WorkerAgent::Log(absl::string_view line) const {
  if (options_.log) {
    options_.log(line);
    return;
  }
  const std::string text =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ",
                   options_.name, ": ", line, "\n");
  std::fwrite(text.data(), 1, text.size(), stderr);
}

bool WorkerAgent::WaitUntil(Clock::time_point until) {
  std::unique_lock<std::mutex> lock(mutex_);
  wake_cv_.wait_until(lock, until, [this] { return wake_; });
  wake_ = false;
  return stopping_;
}

void WorkerAgent::NoteFailure(absl::string_view call, const grpc::Status& status) {
  const Clock::time_point now = Clock::now();
  if (!failing_) {
    failing_ = true;
    failing_since_ = now;
    last_failure_log_ = now;
    Log(absl::StrCat("coordinator ", options_.coordinator.address, " unreachable (", call, ": ",
                     Describe(status), "); retrying every ", options_.max_backoff.count(),
                     " ms at most, any task keeps running"));
  } else if (now - last_failure_log_ >= kFailureLogEvery) {
    last_failure_log_ = now;
    Log(absl::StrCat("coordinator ", options_.coordinator.address, " still unreachable after ",
                     static_cast<int64_t>(Seconds(now - failing_since_)), " s (", call, ": ",
                     Describe(status), ")"));
  }
}

void WorkerAgent::NoteSuccess() {
  if (!failing_) return;
  failing_ = false;
  Log(absl::StrCat("coordinator ", options_.coordinator.address, " reachable again after ",
                   static_cast<int64_t>(Seconds(Clock::now() - failing_since_)), " s"));
}

bool WorkerAgent::Register(absl::Status* fatal) {
  milliseconds backoff = kFirstBackoff;
  while (true) {
    v1::RegisterRequest request;
    request.set_name(options_.name);
    request.set_device(options_.device);
    request.set_host(options_.host);
    request.set_pid(static_cast<int32_t>(getpid()));
    request.set_metrics_address(options_.metrics_address);
    request.set_peak_flops(options_.peak_flops);
    std::string held;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return false;
      if (task_ != nullptr) {
        // Also a task that ended but whose end is not delivered yet: the
        // coordinator adopts it, then takes the end from the next heartbeat.
        request.set_running_job_id(task_->assignment.job_id());
        request.set_running_attempt(task_->assignment.attempt());
        request.set_running_rank(task_->assignment.rank());
        held = task_->Name();
      }
    }
    grpc::ClientContext context;
    rpc::PrepareContext(&context, options_.coordinator, options_.rpc_timeout);
    v1::RegisterResponse response;
    const grpc::Status status = stub_->Register(&context, request, &response);
    if (status.ok()) {
      NoteSuccess();
      const milliseconds interval = response.heartbeat_interval_ms() > 0
                                        ? milliseconds(response.heartbeat_interval_ms())
                                        : kDefaultInterval;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        worker_id_ = response.worker_id();
        interval_ = interval;
      }
      Log(absl::StrCat("registered with coordinator ", options_.coordinator.address, " as ",
                       response.worker_id(), " (device ", options_.device, ", heartbeat every ",
                       interval.count(), " ms",
                       held.empty() ? "" : absl::StrCat(", holding ", held), ")"));
      if (options_.on_registered) options_.on_registered(response.worker_id());
      return true;
    }
    if (fatal != nullptr) {
      switch (status.error_code()) {
        case grpc::StatusCode::UNAUTHENTICATED:
        case grpc::StatusCode::PERMISSION_DENIED:
        case grpc::StatusCode::INVALID_ARGUMENT:
        case grpc::StatusCode::UNIMPLEMENTED:
          *fatal = absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                                absl::StrCat("coordinator ", options_.coordinator.address,
                                             " refused to register worker \"", options_.name,
                                             "\": ", status.error_message()));
          return false;
        default:
          break;
      }
    }
    NoteFailure("Register", status);
    if (WaitUntil(Clock::now() + backoff)) return false;
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

grpc::Status WorkerAgent::Heartbeat(v1::HeartbeatResponse* response, bool* delivered_end) {
  *delivered_end = false;
  v1::HeartbeatRequest request;
  const Task* reported = nullptr;
  bool end = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    request.set_worker_id(worker_id_);
    if (task_ != nullptr) {
      reported = task_.get();
      request.set_job_id(task_->assignment.job_id());
      request.set_attempt(task_->assignment.attempt());
      *request.mutable_progress() = task_->progress;
      if (task_->finished) {
        end = true;
        request.set_status(task_->status);
        request.set_message(task_->message);
        request.set_error_code(task_->error_code);
        for (const auto& [key, value] : task_->result) (*request.mutable_result())[key] = value;
      } else {
        request.set_status(v1::TASK_STATUS_RUNNING);
      }
    } else {
      request.set_status(v1::TASK_STATUS_IDLE);
    }
    (*request.mutable_metrics())["step_seconds"] = last_step_seconds_;
    (*request.mutable_metrics())["busy"] = task_ != nullptr && !task_->finished ? 1 : 0;
  }
  (*request.mutable_metrics())["rss_bytes"] = options_.metrics != nullptr
                                                  ? options_.metrics->UpdateResidentMemory()
                                                  : static_cast<double>(ResidentMemoryBytes());
  grpc::ClientContext context;
  rpc::PrepareContext(&context, options_.coordinator, options_.rpc_timeout);
  grpc::Status status = stub_->Heartbeat(&context, request, response);
  if (status.ok() && !response->reregister() && end) {
    std::unique_ptr<Task> done;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (task_.get() == reported) done = std::move(task_);
    }
    if (done != nullptr) {
      if (done->thread.joinable()) done->thread.join();
      Log(absl::StrCat("reported ", done->Name(), " as ", v1::TaskStatus_Name(done->status)));
      *delivered_end = true;
    }
  }
  return status;
}

void WorkerAgent::HandleResponse(const v1::HeartbeatResponse& response) {
  if (!response.cancel_job_id().empty()) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (task_ != nullptr && task_->assignment.job_id() == response.cancel_job_id() &&
        task_->assignment.attempt() == response.cancel_attempt()) {
      if (!task_->finished && !task_->cancel_requested) {
        task_->cancel_requested = true;
        task_->cancel = true;
        Log(absl::StrCat("the coordinator cancels ", task_->Name(),
                         ": stopping at the next step boundary"));
      }
    }
    // A cancel of anything else is about an attempt this worker no longer
    // holds (its end was delivered): nothing to do.
  }
  if (response.has_assignment() && !response.assignment().job_id().empty()) {
    StartTask(response.assignment());
  }
}

void WorkerAgent::StartTask(const v1::Assignment& assignment) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (task_ != nullptr) {
    if (task_->assignment.job_id() == assignment.job_id() &&
        task_->assignment.attempt() == assignment.attempt()) {
      return;  // The same assignment again.
    }
    Log(absl::StrCat("ignoring the assignment of job ", assignment.job_id(), " attempt ",
                     assignment.attempt(), ": still holding ", task_->Name()));
    return;
  }
  auto task = std::make_unique<Task>();
  task->assignment = assignment;
  RemoteDataOptions data;
  data.connection = options_.coordinator;
  data.retry_for = options_.data_retry_for;
  data.cancel = &task->cancel;
  auto last_retry_log = std::make_shared<std::atomic<int64_t>>(0);
  const std::string name = task->Name();
  data.on_retry = [this, last_retry_log, name](const absl::Status& status) {
    const int64_t now =
        std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
    int64_t last = last_retry_log->load();
    if (now - last >= kRetryLogEvery.count() &&
        last_retry_log->compare_exchange_strong(last, now)) {
      Log(absl::StrCat(name, ": reading data failed, retrying: ", status.ToString()));
    }
  };
  task->data = std::make_unique<RemoteDataSource>(channel_, std::move(data));
  Task* raw = task.get();
  task_ = std::move(task);
  if (options_.metrics != nullptr) options_.metrics->SetBusy(true);
  const int world = std::max(1, assignment.world_size());
  Log(absl::StrCat("assigned ", raw->Name(), ": ", rpc::JobKindName(assignment.spec().kind()),
                   world > 1 ? absl::StrCat(", rank ", assignment.rank(), " of ", world) : "",
                   assignment.resume() ? ", resuming" : ""));
  raw->thread = std::thread(&WorkerAgent::RunTask, this, raw);
}

void WorkerAgent::RunTask(Task* task) {
  TaskEnvironment environment;
  environment.data = task->data.get();
  environment.rendezvous = rendezvous_.get();
  environment.device = options_.device;
  environment.threads = options_.threads;
  environment.collective_address = options_.collective_address;
  environment.collective_timeout = options_.collective_timeout;
  environment.cancel = &task->cancel;
  const std::string prefix = absl::StrCat(task->Name(), ": ");
  TaskHooks hooks;
  hooks.log = [this, &prefix](absl::string_view line) { Log(absl::StrCat(prefix, line)); };
  hooks.progress = [this, task](const std::function<void(v1::Progress*)>& update) {
    std::lock_guard<std::mutex> lock(mutex_);
    update(&task->progress);
  };
  hooks.steps = [this](double step_seconds, int64_t tokens) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      last_step_seconds_ = step_seconds;
    }
    if (options_.metrics != nullptr) {
      options_.metrics->SetStepSeconds(step_seconds);
      options_.metrics->AddTokens(tokens);
    }
  };
  const absl::StatusOr<TaskResult> result = RunAssignment(task->assignment, environment, hooks);

  std::lock_guard<std::mutex> lock(mutex_);
  const double seconds = Seconds(Clock::now() - task->started);
  if (result.ok()) {
    task->status = v1::TASK_STATUS_SUCCEEDED;
    task->result = result->result;
    Log(absl::StrCat(prefix, "succeeded in ", seconds, " s"));
  } else if (task->cancel_requested) {
    task->status = v1::TASK_STATUS_CANCELLED;
    task->message = std::string(result.status().message());
    Log(absl::StrCat(prefix, "cancelled after ", seconds, " s (", result.status().ToString(), ")"));
  } else if (stopping_ && absl::IsCancelled(result.status())) {
    // Stopped by this worker's shutdown: the attempt is to run elsewhere.
    task->status = v1::TASK_STATUS_FAILED;
    task->message = absl::StrCat("worker shutting down (", result.status().message(), ")");
    task->error_code = static_cast<int>(absl::StatusCode::kUnavailable);
    Log(absl::StrCat(prefix, "stopped for shutdown after ", seconds, " s"));
  } else {
    task->status = v1::TASK_STATUS_FAILED;
    task->message = std::string(result.status().message());
    task->error_code = static_cast<int>(result.status().code());
    Log(absl::StrCat(prefix, "failed after ", seconds, " s: ", result.status().ToString()));
  }
  task->finished = true;
  if (options_.metrics != nullptr) {
    options_.metrics->CountTask(OutcomeName(task->status));
    options_.metrics->SetBusy(false);
  }
  wake_ = true;
  wake_cv_.notify_all();
}

absl::Status WorkerAgent::Run(const std::stop_token& stop) {
  std::stop_callback on_stop(stop, [this] {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    wake_ = true;
    wake_cv_.notify_all();
  });
  Log(absl::StrCat("worker ", options_.name, " (device ", options_.device, ", pid ", getpid(),
                   ") connecting to coordinator ", options_.coordinator.address));
  absl::Status fatal;
  if (!Register(&fatal)) {
    if (!fatal.ok()) return fatal;
    Shutdown();
    return absl::OkStatus();
  }
  Clock::time_point next = Clock::now();
  milliseconds backoff = kFirstBackoff;
  while (!WaitUntil(next)) {
    v1::HeartbeatResponse response;
    bool delivered_end = false;
    const grpc::Status status = Heartbeat(&response, &delivered_end);
    if ((status.ok() && response.reregister()) ||
        status.error_code() == grpc::StatusCode::NOT_FOUND) {
      NoteSuccess();
      Log("the coordinator does not know this worker (did it restart?): registering again");
      if (!Register(nullptr)) break;
      next = Clock::now();
      backoff = kFirstBackoff;
      continue;
    }
    if (!status.ok()) {
      NoteFailure("Heartbeat", status);
      next = Clock::now() + backoff;
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    NoteSuccess();
    backoff = kFirstBackoff;
    HandleResponse(response);
    std::lock_guard<std::mutex> lock(mutex_);
    next = Clock::now() + interval_;
  }
  Shutdown();
  return absl::OkStatus();
}

void WorkerAgent::Shutdown() {
  v1::HeartbeatRequest request;
  bool finished = false;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (task_ == nullptr) {
      if (!worker_id_.empty()) {
        // Tell the coordinator not to assign anything to us any more (best
        // effort: without it, it finds out from its heartbeat timeout).
        request.set_worker_id(worker_id_);
        request.set_status(v1::TASK_STATUS_IDLE);
        request.set_stopping(true);
        lock.unlock();
        grpc::ClientContext context;
        rpc::PrepareContext(&context, options_.coordinator,
                            std::min(options_.rpc_timeout, kShutdownReportFor));
        v1::HeartbeatResponse response;
        stub_->Heartbeat(&context, request, &response).IgnoreError();
      }
      Log("stopped");
      return;
    }
    Task* task = task_.get();
    if (!task->finished) {
      task->cancel = true;
      Log(absl::StrCat("stopping: cancelling ", task->Name(), " (waiting up to ",
                       options_.shutdown_grace.count() / 1000, " s for it)"));
      wake_cv_.wait_for(lock, options_.shutdown_grace, [task] { return task->finished; });
    }
    finished = task->finished;
    request.set_worker_id(worker_id_);
    request.set_stopping(true);
    request.set_job_id(task->assignment.job_id());
    request.set_attempt(task->assignment.attempt());
    *request.mutable_progress() = task->progress;
    if (finished) {
      request.set_status(task->status);
      request.set_message(task->message);
      request.set_error_code(task->error_code);
      for (const auto& [key, value] : task->result) (*request.mutable_result())[key] = value;
    } else {
      request.set_status(v1::TASK_STATUS_FAILED);
      request.set_message(absl::StrCat("worker shutting down (the task did not stop within ",
                                       options_.shutdown_grace.count() / 1000, " s)"));
      request.set_error_code(static_cast<int>(absl::StatusCode::kUnavailable));
    }
  }
  const std::string what = absl::StrCat("job ", request.job_id(), " attempt ", request.attempt(),
                                        " as ", v1::TaskStatus_Name(request.status()));
  if (request.worker_id().empty()) {
    Log(absl::StrCat("stopped without reporting ", what, ": never registered"));
  } else {
    const Clock::time_point give_up = Clock::now() + kShutdownReportFor;
    milliseconds backoff = kFirstBackoff;
    while (true) {
      grpc::ClientContext context;
      rpc::PrepareContext(&context, options_.coordinator,
                          std::min(options_.rpc_timeout, kShutdownReportFor));
      v1::HeartbeatResponse response;
      const grpc::Status status = stub_->Heartbeat(&context, request, &response);
      if (status.ok() && !response.reregister()) {
        Log(absl::StrCat("reported ", what, "; stopped"));
        break;
      }
      // A coordinator that forgot this worker learns of the attempt's end
      // from its own timeout: registering again now would only announce a
      // worker that is about to go.
      if (status.ok() || Clock::now() + backoff > give_up) {
        Log(absl::StrCat(
            "stopped without reporting ", what, ": ",
            status.ok() ? "the coordinator does not know this worker" : Describe(status)));
        break;
      }
      std::this_thread::sleep_for(backoff);  // Backoff before a retry.
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
  }
  if (finished) {
    std::unique_ptr<Task> done;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done = std::move(task_);
    }
    if (done->thread.joinable()) done->thread.join();
  }
}

}  // namespace llamapro::worker
