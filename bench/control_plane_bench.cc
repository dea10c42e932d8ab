// Control-plane latency of the coordinator (issue: "200 concurrent clients
// polling GetJob and WatchJob against a coordinator with 1,000 jobs for 30 s;
// p99 < 20 ms, no errors").
//
// Starts a real llamapro-coordinator on a fresh data dir (or uses --address),
// submits --jobs EXPAND jobs (no workers are registered, so they stay
// PENDING) and cancels every second one, so half the jobs are terminal. Then,
// with --clients clients (gRPC callback API) sharing --channels connections, each looping
// closed-loop (one call at a time) for --seconds:
//   1. baseline: grpc.health.v1.Health/Check on the same server, i.e. the bare
//      gRPC floor of this machine (the same clients, channels and duration);
//   2. load: GetJob on a random job, then WatchJob on a random terminal job,
//      read to its end (a terminal job's watch replays its events and ends,
//      so every watch is one complete call; a watch of a pending job would
//      stream forever and is not measured).
// The baseline runs first, after an untimed warm-up of the load. Every call
// carries a 10 s deadline; any status other than OK, a GetJob answer for
// another job, or a watch that ends without reaching a terminal event counts
// as an error. Prints calls, calls/s, p50/p90/p99/max latency and errors per
// call kind, then the verdict and the ratio to the floor last. Each phase also
// prints the CPU used by the coordinator, the clients and everything else
// (cores, and microseconds per call: what other load disturbs least). Exits 1
// if any call failed (whatever the latencies), 2 if the setup failed.
//
// Usage: control_plane_bench [--clients N] [--jobs N] [--seconds S] [--channels N]
//                            [--warmup S] [--coordinator-bin PATH | --address HOST:PORT]
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <latch>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "llamapro/v1/jobs.grpc.pb.h"
#include "rpc/rpc.h"

namespace llamapro {
namespace {

namespace v1 = ::llamapro::v1;
using Clock = std::chrono::steady_clock;

constexpr double kTargetP99Ms = 20;
constexpr auto kCallDeadline = std::chrono::seconds(10);
constexpr auto kStartTimeout = std::chrono::seconds(60);

struct Args {
  int clients = 200;
  int jobs = 1000;
  double seconds = 30;
  double warmup = 2;
  int channels = 0;  // 0: one per 25 clients.
  std::string address;
  std::string coordinator_bin;
};

// The call kinds measured; kHealth is the baseline.
enum Kind { kHealth = 0, kGetJob = 1, kWatchJob = 2, kNumKinds = 3 };
constexpr const char* kKindNames[kNumKinds] = {"Health/Check (floor)", "GetJob", "WatchJob"};

std::string SelfDir() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string(".") : self.parent_path().string();
}

// A llamapro-coordinator child process on a fresh data dir. Stopped (SIGTERM,
// then waited for) by Stop() or the destructor; the child also gets SIGTERM if
// this process dies first (PR_SET_PDEATHSIG). Not thread-safe.
class CoordinatorProcess {
 public:
  // Starts `binary` with its logs in `dir`/coordinator.log and waits until it
  // writes its port file. Call before any gRPC use (it forks).
  static absl::StatusOr<std::unique_ptr<CoordinatorProcess>> Start(const std::string& binary,
                                                                   const std::string& dir) {
    if (access(binary.c_str(), X_OK) != 0) {
      return absl::NotFoundError(absl::StrCat("--coordinator-bin ", binary,
                                              ": not an executable (build llamapro-coordinator)"));
    }
    std::unique_ptr<CoordinatorProcess> p(new CoordinatorProcess());
    p->data_dir_ = JoinPath(dir, "data");
    p->log_ = JoinPath(dir, "coordinator.log");
    const std::string port_file = JoinPath(dir, "port");
    LP_RETURN_IF_ERROR(MakeDirs(JoinPath(p->data_dir_, "models/base")));
    std::vector<std::string> argv = {binary,
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--port-file",
                                     port_file,
                                     "--metrics-listen",
                                     "127.0.0.1:0",
                                     "--metrics-port-file",
                                     JoinPath(dir, "metrics-port"),
                                     "--data-dir",
                                     p->data_dir_};
    std::vector<char*> cargv;
    cargv.reserve(argv.size() + 1);
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    const int log_fd = open(p->log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) return ErrnoStatus("cannot create", p->log_, errno);
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
      const int err = errno;
      close(log_fd);
      return ErrnoStatus("cannot fork for", binary, err);
    }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(127);
      dup2(log_fd, STDOUT_FILENO);
      dup2(log_fd, STDERR_FILENO);
      execv(binary.c_str(), cargv.data());
      _exit(127);
    }
    close(log_fd);
    p->pid_ = pid;
    const auto give_up = Clock::now() + kStartTimeout;
    while (true) {
      absl::StatusOr<std::string> port = ReadFile(port_file);
      if (port.ok() && absl::EndsWith(*port, "\n")) {
        p->address_ = std::string(absl::StripAsciiWhitespace(*port));
        return p;
      }
      int wstatus = 0;
      if (waitpid(pid, &wstatus, WNOHANG) == pid) {
        p->pid_ = -1;
        return absl::UnavailableError(absl::StrCat(
            "llamapro-coordinator ",
            WIFEXITED(wstatus) ? absl::StrCat("exited with status ", WEXITSTATUS(wstatus))
                               : absl::StrCat("was killed by signal ", WTERMSIG(wstatus)),
            " before serving; see ", p->log_));
      }
      if (Clock::now() > give_up) {
        return absl::DeadlineExceededError(absl::StrCat("llamapro-coordinator did not write ",
                                                        port_file, " within 60 s; see ", p->log_));
      }
      // Polling a file another process writes; nothing to wait on instead.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  ~CoordinatorProcess() { Stop().IgnoreError(); }

  // SIGTERM and wait; an error if it did not exit with status 0.
  absl::Status Stop() {
    if (pid_ <= 0) return absl::OkStatus();
    kill(pid_, SIGTERM);
    int wstatus = 0;
    const pid_t waited = waitpid(pid_, &wstatus, 0);
    pid_ = -1;
    if (waited < 0 || !WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0) {
      return absl::InternalError(absl::StrCat(
          "llamapro-coordinator did not stop cleanly (wait status ", wstatus, "); see ", log_));
    }
    return absl::OkStatus();
  }

  // CPU seconds (user + system) the child has used so far; 0 once stopped.
  double CpuSeconds() const {
    if (pid_ <= 0) return 0;
    // Not ReadFile: /proc files report size 0.
    std::ifstream in(absl::StrCat("/proc/", pid_, "/stat"));
    std::string stat;
    if (!std::getline(in, stat)) return 0;
    // Fields after the parenthesised command name: state is field 3, utime
    // and stime are fields 14 and 15.
    const size_t close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) return 0;
    unsigned long utime = 0, stime = 0;
    if (std::sscanf(stat.c_str() + close_paren + 1,
                    " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2) {
      return 0;
    }
    return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }

  const std::string& address() const { return address_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& log() const { return log_; }
  pid_t pid() const { return pid_; }

 private:
  CoordinatorProcess() = default;
  pid_t pid_ = -1;
  std::string address_, data_dir_, log_;
};

// Busy CPU seconds of the whole machine since boot (/proc/stat), all cores.
double MachineCpuSeconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0,
                     steal = 0;
  if (!(in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal)) return 0;
  return static_cast<double>(user + nice + system + irq + softirq) /
         static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// rpc::MakeChannel's arguments, plus a channel-local subchannel pool: channels
// made with equal arguments otherwise share one TCP connection (gRPC's global
// subchannel pool), and --channels would not mean connections.
std::shared_ptr<grpc::Channel> MakeBenchChannel(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(rpc::kMaxMessageBytes);
  args.SetMaxSendMessageSize(rpc::kMaxMessageBytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + kCallDeadline);
}

struct Jobs {
  std::vector<std::string> all;
  std::vector<std::string> terminal;
};

// Submits `n` EXPAND jobs with distinct outputs and cancels every second one.
absl::StatusOr<Jobs> Populate(const std::shared_ptr<grpc::Channel>& channel, int n,
                              const std::string& run_tag) {
  auto stub = v1::JobService::NewStub(channel);
  Jobs jobs;
  const auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    v1::SubmitJobRequest request;
    v1::JobSpec* spec = request.mutable_spec();
    spec->set_kind(v1::JOB_KIND_EXPAND);
    spec->set_name(absl::StrFormat("control-plane-bench %d", i));
    spec->mutable_expand()->set_model("models/base");
    spec->mutable_expand()->set_out(absl::StrFormat("control-plane-bench/%s/job-%04d", run_tag, i));
    spec->mutable_expand()->set_add_blocks(2);
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::Job job;
    grpc::Status status = stub->SubmitJob(&context, request, &job);
    if (!status.ok()) {
      return absl::Status(rpc::FromGrpc(status).code(),
                          absl::StrCat("SubmitJob ", i, ": ", status.error_message()));
    }
    jobs.all.push_back(job.id());
  }
  const double submitted = std::chrono::duration<double>(Clock::now() - start).count();
  for (size_t i = 1; i < jobs.all.size(); i += 2) {
    v1::CancelJobRequest request;
    request.set_id(jobs.all[i]);
    grpc::ClientContext context;
    SetDeadline(&context);
    v1::Job job;
    grpc::Status status = stub->CancelJob(&context, request, &job);
    if (!status.ok()) {
      return absl::Status(rpc::FromGrpc(status).code(),
                          absl::StrCat("CancelJob ", jobs.all[i], ": ", status.error_message()));
    }
    if (job.state() != v1::JOB_STATE_CANCELLED) {
      return absl::InternalError(absl::StrCat("CancelJob ", jobs.all[i], " left it in state ",
                                              v1::JobState_Name(job.state())));
    }
    jobs.terminal.push_back(job.id());
  }
  const double total = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("populated: %d jobs submitted in %.2f s, %zu cancelled in %.2f s\n", n, submitted,
              jobs.terminal.size(), total - submitted);
  if (jobs.terminal.empty()) return absl::InvalidArgumentError("--jobs must be at least 2");
  return jobs;
}

// What one client thread measured: latencies (ns) and errors per kind.
struct ClientRecord {
  std::vector<int64_t> latency_ns[kNumKinds];
  int64_t errors[kNumKinds] = {};
  int64_t watch_events = 0;  // Received by all WatchJob calls.
  std::string first_error;

  void Error(Kind kind, const std::string& what) {
    ++errors[kind];
    if (first_error.empty()) first_error = absl::StrCat(kKindNames[kind], ": ", what);
  }
};

enum class Mode { kHealth, kLoad };

// One closed-loop client (one call in flight at a time) driven by gRPC's
// callback API: no thread per client, so the clients' own CPU, which shares
// this machine with the coordinator, stays small (200 sync client threads
// cost the coordinator's latency more than the coordinator itself did).
// Load: GetJob on a random job, then WatchJob on a random terminal job, read
// to its end, and again. Callbacks of one client never overlap.
class Client {
 public:
  Client(const std::shared_ptr<grpc::Channel>& channel, const Jobs* jobs, uint64_t seed)
      : jobs_(jobs),
        job_stub_(v1::JobService::NewStub(channel)),
        health_stub_(grpc::health::v1::Health::NewStub(channel)),
        rng_(seed) {}
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Runs calls until `end`; then `done` runs (on a gRPC thread), after which
  // this client is not touched until the next Start.
  void Start(Mode mode, Clock::time_point end, ClientRecord* record, std::function<void()> done) {
    mode_ = mode;
    end_ = end;
    record_ = record;
    done_ = std::move(done);
    watch_next_ = false;
    Next();
  }

 private:
  // One WatchJob call; deletes itself when it ends.
  class WatchCall final : public grpc::ClientReadReactor<v1::JobEvent> {
   public:
    WatchCall(Client* client, const std::string& id) : client_(client), id_(id) {
      SetDeadline(&context_);
      request_.set_id(id);
      client->job_stub_->async()->WatchJob(&context_, &request_, this);
      StartRead(&event_);
      StartCall();
    }
    void OnReadDone(bool ok) override {
      if (!ok) return;  // The stream ended: OnDone follows.
      ++events_;
      last_ = event_.state();
      StartRead(&event_);
    }
    void OnDone(const grpc::Status& status) override {
      Client* client = client_;
      const std::string id = id_;
      const int64_t events = events_;
      const v1::JobState last = last_;
      delete this;
      client->WatchDone(status, id, events, last);
    }

   private:
    Client* client_;
    std::string id_;
    grpc::ClientContext context_;
    v1::WatchJobRequest request_;
    v1::JobEvent event_;
    int64_t events_ = 0;
    v1::JobState last_ = v1::JOB_STATE_UNSPECIFIED;
  };

  void Next() {
    if (Clock::now() >= end_) {
      done_();  // Last: the phase may end now.
      return;
    }
    start_ = Clock::now();
    if (mode_ == Mode::kHealth) {
      Health();
    } else if (watch_next_) {
      new WatchCall(this, Pick(jobs_->terminal));
    } else {
      GetJob();
    }
  }

  void Health() {
    context_ = std::make_unique<grpc::ClientContext>();
    SetDeadline(context_.get());
    health_stub_->async()->Check(
        context_.get(), &health_request_, &health_response_, [this](const grpc::Status& status) {
          Done(kHealth);
          if (!status.ok()) {
            record_->Error(kHealth, StatusText(status));
          } else if (health_response_.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
            record_->Error(kHealth, "not SERVING");
          }
          Next();
        });
  }

  void GetJob() {
    context_ = std::make_unique<grpc::ClientContext>();
    SetDeadline(context_.get());
    get_request_.set_id(Pick(jobs_->all));
    job_.Clear();
    job_stub_->async()->GetJob(
        context_.get(), &get_request_, &job_, [this](const grpc::Status& status) {
          Done(kGetJob);
          if (!status.ok()) {
            record_->Error(kGetJob, StatusText(status));
          } else if (job_.id() != get_request_.id()) {
            record_->Error(kGetJob,
                           absl::StrCat("asked for ", get_request_.id(), ", got ", job_.id()));
          }
          watch_next_ = true;
          Next();
        });
  }

  void WatchDone(const grpc::Status& status, const std::string& id, int64_t events,
                 v1::JobState last) {
    Done(kWatchJob);
    record_->watch_events += events;
    if (!status.ok()) {
      record_->Error(kWatchJob, StatusText(status));
    } else if (events == 0 || last != v1::JOB_STATE_CANCELLED) {
      record_->Error(kWatchJob, absl::StrCat(id, ": ", events, " events, the last in state ",
                                             v1::JobState_Name(last), ", expected CANCELLED"));
    }
    watch_next_ = false;
    Next();
  }

  const std::string& Pick(const std::vector<std::string>& ids) {
    return ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng_)];
  }
  void Done(Kind kind) {
    record_->latency_ns[kind].push_back(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start_).count());
  }
  static std::string StatusText(const grpc::Status& status) {
    return rpc::FromGrpc(status).ToString();
  }

  const Jobs* jobs_;
  std::unique_ptr<v1::JobService::Stub> job_stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_stub_;
  std::mt19937_64 rng_;
  Mode mode_ = Mode::kLoad;
  Clock::time_point end_;
  ClientRecord* record_ = nullptr;
  std::function<void()> done_;
  bool watch_next_ = false;
  Clock::time_point start_;
  std::unique_ptr<grpc::ClientContext> context_;  // Of the unary call in flight.
  grpc::health::v1::HealthCheckRequest health_request_;
  grpc::health::v1::HealthCheckResponse health_response_;
  v1::GetJobRequest get_request_;
  v1::Job job_;
};

struct PhaseResult {
  double seconds = 0;
  std::vector<int64_t> latency_ns[kNumKinds];  // Sorted.
  int64_t errors[kNumKinds] = {};
  int64_t watch_events = 0;
  std::vector<std::string> first_errors;
  double coordinator_cpu = 0;  // Seconds.
  double bench_cpu = 0;        // Seconds.
  double machine_cpu = 0;      // Seconds, all processes.
};

// Runs every client closed-loop in `mode` for `seconds`. A call in flight at
// the end completes and counts.
PhaseResult RunPhase(std::vector<std::unique_ptr<Client>>* clients, double seconds,
                     const CoordinatorProcess* coordinator, Mode mode) {
  const size_t n = clients->size();
  std::vector<ClientRecord> records(n);
  std::latch finished(static_cast<std::ptrdiff_t>(n));
  PhaseResult result;
  const double coordinator_cpu = coordinator != nullptr ? coordinator->CpuSeconds() : 0;
  const double bench_cpu = SelfCpuSeconds();
  const double machine_cpu = MachineCpuSeconds();
  const auto begin = Clock::now();
  const auto end =
      begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (size_t i = 0; i < n; ++i) {
    (*clients)[i]->Start(mode, end, &records[i], [&finished] { finished.count_down(); });
  }
  finished.wait();
  result.seconds = std::chrono::duration<double>(Clock::now() - begin).count();
  if (coordinator != nullptr) result.coordinator_cpu = coordinator->CpuSeconds() - coordinator_cpu;
  result.bench_cpu = SelfCpuSeconds() - bench_cpu;
  result.machine_cpu = MachineCpuSeconds() - machine_cpu;
  for (ClientRecord& r : records) {
    for (int k = 0; k < kNumKinds; ++k) {
      result.latency_ns[k].insert(result.latency_ns[k].end(), r.latency_ns[k].begin(),
                                  r.latency_ns[k].end());
      result.errors[k] += r.errors[k];
    }
    result.watch_events += r.watch_events;
    if (!r.first_error.empty() && result.first_errors.size() < 5) {
      result.first_errors.push_back(r.first_error);
    }
  }
  for (auto& v : result.latency_ns) std::sort(v.begin(), v.end());
  return result;
}

// Nearest-rank percentile of sorted latencies, in ms.
double PercentileMs(const std::vector<int64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  const auto rank = std::clamp<size_t>(
      static_cast<size_t>(std::ceil(p / 100 * static_cast<double>(sorted.size()))), 1,
      sorted.size());
  return static_cast<double>(sorted[rank - 1]) * 1e-6;
}

void PrintPhase(const char* name, const PhaseResult& r, bool have_coordinator) {
  size_t calls = 0;
  for (const auto& v : r.latency_ns) calls += v.size();
  // CPU time per call is what other load on the machine disturbs least.
  const double us_per_call = calls > 0 ? 1e6 / static_cast<double>(calls) : 0;
  std::string line = absl::StrFormat("%s: %.2f s; CPU in cores (us per call):", name, r.seconds);
  if (have_coordinator) {
    absl::StrAppendFormat(&line, " coordinator %.2f (%.0f),", r.coordinator_cpu / r.seconds,
                          r.coordinator_cpu * us_per_call);
  }
  absl::StrAppendFormat(&line, " clients (this process) %.2f (%.0f)", r.bench_cpu / r.seconds,
                        r.bench_cpu * us_per_call);
  if (have_coordinator) {
    // Whatever else ran on the machine meanwhile disturbs the measurement.
    absl::StrAppendFormat(
        &line, ", other processes %.2f",
        std::max(0.0, r.machine_cpu - r.coordinator_cpu - r.bench_cpu) / r.seconds);
  }
  const int64_t watches = static_cast<int64_t>(r.latency_ns[kWatchJob].size());
  if (watches > 0) {
    absl::StrAppendFormat(&line, "; %.2f events per WatchJob",
                          static_cast<double>(r.watch_events) / static_cast<double>(watches));
  }
  std::printf("%s\n", line.c_str());
  for (const std::string& e : r.first_errors)
    std::printf("  first error of a client: %s\n", e.c_str());
  std::fflush(stdout);
}

void PrintRow(Kind kind, const PhaseResult& r) {
  const std::vector<int64_t>& v = r.latency_ns[kind];
  std::printf("%-22s %9zu %9.0f %8.2f %8.2f %8.2f %8.2f %7lld\n", kKindNames[kind], v.size(),
              static_cast<double>(v.size()) / r.seconds, PercentileMs(v, 50), PercentileMs(v, 90),
              PercentileMs(v, 99), PercentileMs(v, 100), static_cast<long long>(r.errors[kind]));
}

int Run(const Args& args) {
  const int channels_n = args.channels > 0 ? args.channels : std::max(1, (args.clients + 24) / 25);
  std::printf(
      "control_plane_bench: %d clients on %d channels, %d jobs, %.0f s per phase, %u cores\n",
      args.clients, channels_n, args.jobs, args.seconds, std::thread::hardware_concurrency());

  // The coordinator is forked before this process makes any gRPC thread.
  std::unique_ptr<CoordinatorProcess> coordinator;
  std::string address = args.address;
  std::string temp_dir;
  if (address.empty()) {
    std::string bin = args.coordinator_bin.empty()
                          ? SelfDir() + "/../coordinator/llamapro-coordinator"
                          : args.coordinator_bin;
    std::string pattern =
        (std::filesystem::temp_directory_path() / "llamapro-control-plane-bench-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      std::fprintf(stderr, "control_plane_bench: cannot create a temporary directory\n");
      return 2;
    }
    temp_dir = pattern;
    auto started = CoordinatorProcess::Start(bin, temp_dir);
    if (!started.ok()) {
      // Keep the directory only when the coordinator left a log in it.
      std::error_code ignored;
      if (std::filesystem::file_size(JoinPath(temp_dir, "coordinator.log"), ignored) == 0 ||
          ignored) {
        RemoveAll(temp_dir).IgnoreError();
      }
      std::fprintf(stderr, "control_plane_bench: %s\n", started.status().ToString().c_str());
      return 2;
    }
    coordinator = std::move(*started);
    address = coordinator->address();
    std::printf("coordinator: %s (pid %d) at %s, data dir %s\n", bin.c_str(),
                static_cast<int>(coordinator->pid()), address.c_str(),
                coordinator->data_dir().c_str());
  } else {
    std::printf("coordinator: %s (not started here)\n", address.c_str());
  }
  std::fflush(stdout);
  // After the coordinator started: its log (kept with the data dir) says why.
  auto setup_failed = [&coordinator](const std::string& what) {
    std::fprintf(stderr, "control_plane_bench: %s\n", what.c_str());
    if (coordinator != nullptr) {
      std::fprintf(stderr, "control_plane_bench: coordinator log: %s\n",
                   coordinator->log().c_str());
    }
    return 2;
  };

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  channels.reserve(static_cast<size_t>(channels_n));
  for (int c = 0; c < channels_n; ++c) channels.push_back(MakeBenchChannel(address));
  for (auto& channel : channels) {
    if (!channel->WaitForConnected(std::chrono::system_clock::now() + kCallDeadline)) {
      return setup_failed(absl::StrCat("cannot connect to ", address));
    }
  }
  const std::string run_tag = absl::StrCat(std::chrono::duration_cast<std::chrono::milliseconds>(
                                               std::chrono::system_clock::now().time_since_epoch())
                                               .count(),
                                           "-", getpid());
  absl::StatusOr<Jobs> jobs = Populate(channels[0], args.jobs, run_tag);
  if (!jobs.ok()) return setup_failed(jobs.status().ToString());

  std::vector<std::unique_ptr<Client>> clients;
  clients.reserve(static_cast<size_t>(args.clients));
  for (int i = 0; i < args.clients; ++i) {
    clients.push_back(std::make_unique<Client>(channels[static_cast<size_t>(i % channels_n)],
                                               &*jobs, static_cast<uint64_t>(i) + 1));
  }
  const Mode load = Mode::kLoad;
  const Mode health = Mode::kHealth;
  if (args.warmup > 0) {
    PhaseResult warm = RunPhase(&clients, args.warmup, coordinator.get(), load);
    PrintPhase("warm-up (load, not counted)", warm, coordinator != nullptr);
  }
  PhaseResult floor = RunPhase(&clients, args.seconds, coordinator.get(), health);
  PrintPhase("phase 1, baseline: grpc.health.v1.Health/Check", floor, coordinator != nullptr);
  PhaseResult ours = RunPhase(&clients, args.seconds, coordinator.get(), load);
  PrintPhase("phase 2, load: GetJob (any job) + WatchJob (a cancelled job, to its end)", ours,
             coordinator != nullptr);

  absl::Status stopped = coordinator != nullptr ? coordinator->Stop() : absl::OkStatus();
  if (!stopped.ok()) {
    std::fprintf(stderr, "control_plane_bench: %s\n", stopped.ToString().c_str());
  } else if (!temp_dir.empty()) {
    RemoveAll(temp_dir).IgnoreError();
  }

  std::printf("%-22s %9s %9s %8s %8s %8s %8s %7s\n", "call", "calls", "calls/s", "p50 ms", "p90 ms",
              "p99 ms", "max ms", "errors");
  PrintRow(kHealth, floor);
  PrintRow(kGetJob, ours);
  PrintRow(kWatchJob, ours);
  const int64_t errors = floor.errors[kHealth] + ours.errors[kGetJob] + ours.errors[kWatchJob];
  const double floor_p99 = PercentileMs(floor.latency_ns[kHealth], 99);
  const double get_p99 = PercentileMs(ours.latency_ns[kGetJob], 99);
  const double watch_p99 = PercentileMs(ours.latency_ns[kWatchJob], 99);
  const bool pass = errors == 0 && get_p99 < kTargetP99Ms && watch_p99 < kTargetP99Ms &&
                    !ours.latency_ns[kGetJob].empty() && !ours.latency_ns[kWatchJob].empty();
  std::printf(
      "p99 GetJob %.2f ms, WatchJob %.2f ms, %lld errors (target < %.0f ms, no errors: %s); "
      "%.2fx and %.2fx the gRPC health floor's p99 of %.2f ms\n",
      get_p99, watch_p99, static_cast<long long>(errors), kTargetP99Ms, pass ? "PASS" : "FAIL",
      floor_p99 > 0 ? get_p99 / floor_p99 : 0.0, floor_p99 > 0 ? watch_p99 / floor_p99 : 0.0,
      floor_p99);
  if (!stopped.ok()) return 2;
  return errors == 0 ? 0 : 1;
}

}  // namespace
}  // namespace llamapro

int main(int argc, char** argv) {
  llamapro::Args args;
  CLI::App app{
      "control_plane_bench: GetJob / WatchJob latency of llamapro-coordinator under concurrent "
      "clients, against the gRPC health-check floor of the same server."};
  app.add_option("--clients", args.clients, "Concurrent client threads")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  app.add_option("--jobs", args.jobs, "Jobs submitted (every second one is then cancelled)")
      ->capture_default_str()
      ->check(CLI::Range(2, 1000000));
  app.add_option("--seconds", args.seconds, "Duration of each measured phase")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  app.add_option("--warmup", args.warmup, "Untimed warm-up of the load before the baseline (s)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 600.0));
  app.add_option("--channels", args.channels,
                 "gRPC connections the clients share round-robin (0: one per 25 clients)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  auto* address = app.add_option(
      "--address", args.address,
      "host:port of a running coordinator to use instead of starting one (jobs are added to it)");
  app.add_option("--coordinator-bin", args.coordinator_bin,
                 "llamapro-coordinator to start (default: ../coordinator/llamapro-coordinator "
                 "next to this binary)")
      ->excludes(address);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return llamapro::Run(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "control_plane_bench: internal error: %s\n", e.what());
  }
  return 2;
}
