// The cluster: `workers` lists the coordinator's workers; `up` runs a local
// coordinator and N CPU workers as child processes (docs/llamaproctl.md).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"
#include "client/commands.h"
#include "client/coordinator_client.h"
#include "client/remote.h"

namespace llamapro::cli {
namespace {

// --- workers ---------------------------------------------------------------------

struct WorkersFlags {
  RemoteFlags remote;
};

void RunWorkers(const WorkersFlags& flags) {
  std::unique_ptr<client::CoordinatorClient> client = Connect(flags.remote);
  auto response = client->ListWorkers();
  ThrowIfError(response.status());
  if (flags.remote.json) {
    PrintJson(*response);
    return;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "DEVICE", "HOST", "STATE", "JOB", "RANK", "LAST HEARTBEAT"}};
  for (const v1::WorkerInfo& worker : response->workers()) {
    const bool assigned = !worker.job_id().empty();
    rows.push_back({worker.name(), worker.device(), worker.host().empty() ? "-" : worker.host(),
                    WorkerStateName(worker.state()), assigned ? worker.job_id() : "-",
                    assigned ? absl::StrCat(worker.rank()) : "-",
                    absl::StrFormat("%.1fs ago", worker.seconds_since_heartbeat())});
  }
  PrintTable(rows);
}

// --- up: child processes -----------------------------------------------------------

using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kStopGrace{10};

struct Child {
  std::string name;      // "coordinator", "worker-0", ...
  std::string log_path;  // Its stdout and stderr.
  pid_t pid = -1;
  bool running = false;
  int wait_status = 0;  // From waitpid, once it ended.
};

std::string DescribeExit(int wait_status) {
  if (WIFEXITED(wait_status)) return absl::StrCat("exited with status ", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) {
    const int signal_number = WTERMSIG(wait_status);
    return absl::StrCat("was killed by signal ", signal_number, " (", strsignal(signal_number),
                        ")");
  }
  return absl::StrCat("ended with wait status ", wait_status);
}

// `name` next to this executable, in its build-tree sibling directory
// (client/llamaproctl beside coordinator/llamapro-coordinator and
// worker/llamapro-worker), or on PATH.
std::string FindBinary(const std::string& name, const std::string& build_subdir) {
  std::vector<std::filesystem::path> candidates;
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    candidates.push_back(self.parent_path() / name);
    candidates.push_back(self.parent_path().parent_path() / build_subdir / name);
  }
  const char* path_env = std::getenv("PATH");
  if (path_env != nullptr) {
    for (absl::string_view dir : absl::StrSplit(path_env, ':', absl::SkipEmpty())) {
      candidates.push_back(std::filesystem::path(std::string(dir)) / name);
    }
  }
  for (const std::filesystem::path& candidate : candidates) {
    if (std::filesystem::is_regular_file(candidate, ec) && access(candidate.c_str(), X_OK) == 0) {
      return candidate.lexically_normal().string();
    }
  }
  throw CommandError(absl::StrCat(name, " not found: looked next to ",
                                  ec ? "llamaproctl" : self.string(), ", in ../", build_subdir,
                                  "/ beside it, and on PATH"));
}

// Starts `binary args...` as a child in its own process group with stdin
// from /dev/null and stdout and stderr appended to child->log_path. The
// child gets SIGTERM should this process die first (PR_SET_PDEATHSIG), and
// the signal mask `child_mask`.
void Spawn(const std::string& binary, const std::vector<std::string>& args,
           const sigset_t& child_mask, Child* child) {
  const int log_fd = open(child->log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) ThrowIfError(ErrnoStatus("open", child->log_path, errno));
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null_fd < 0) {
    close(log_fd);
    ThrowIfError(ErrnoStatus("open", "/dev/null", errno));
  }
  // Everything the child needs is prepared before fork: after it, the child
  // makes only async-signal-safe calls until exec.
  std::vector<std::string> argv_strings = {binary};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  argv.reserve(argv_strings.size() + 1);
  for (std::string& arg : argv_strings) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // The parent died before prctl.
    dup2(null_fd, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    sigaction(SIGINT, &default_action, nullptr);
    sigaction(SIGTERM, &default_action, nullptr);
    sigprocmask(SIG_SETMASK, &child_mask, nullptr);
    execv(argv[0], argv.data());
    constexpr char kMessage[] = "llamaproctl up: exec failed\n";
    [[maybe_unused]] ssize_t ignored = write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
    _exit(127);
  }
  const int fork_errno = errno;
  close(log_fd);
  close(null_fd);
  if (pid < 0) ThrowIfError(ErrnoStatus("fork for", binary, fork_errno));
  setpgid(pid, pid);  // Also here, so the group exists whichever runs first.
  child->pid = pid;
  child->running = true;
}

// Waits up to `timeout` for one of `signals`; returns it, or 0.
int WaitForSignal(const sigset_t& signals, std::chrono::milliseconds timeout) {
  timespec wait{};
  wait.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  wait.tv_nsec = static_cast<long>((timeout.count() % 1000) * 1000000);
  const int signal_number = sigtimedwait(&signals, nullptr, &wait);
  return signal_number > 0 ? signal_number : 0;
}

// Reaps the children that ended; returns the first of them, or nullptr.
Child* Reap(std::deque<Child>& children) {
  Child* ended = nullptr;
  for (Child& child : children) {
    if (!child.running) continue;
    int status = 0;
    if (waitpid(child.pid, &status, WNOHANG) == child.pid) {
      child.running = false;
      child.wait_status = status;
      if (ended == nullptr) ended = &child;
    }
  }
  return ended;
}

// The last `lines` lines of a log file, indented, or "" when unreadable.
std::string LogTail(const std::string& path, size_t lines) {
  auto text = ReadFile(path);
  if (!text.ok()) return "";
  std::vector<absl::string_view> all =
      absl::StrSplit(absl::StripTrailingAsciiWhitespace(*text), '\n');
  const size_t first = all.size() > lines ? all.size() - lines : 0;
  std::string tail;
  for (size_t i = first; i < all.size(); ++i) absl::StrAppend(&tail, "  | ", all[i], "\n");
  return tail;
}

class Cluster {
 public:
  Cluster() {
    sigemptyset(&signals_);
    sigaddset(&signals_, SIGINT);
    sigaddset(&signals_, SIGTERM);
    sigaddset(&signals_, SIGCHLD);
    // Blocked in every thread (gRPC's start later and inherit the mask), so
    // they arrive only through sigtimedwait here; children get the mask back.
    pthread_sigmask(SIG_BLOCK, &signals_, &original_mask_);
  }
  ~Cluster() {
    StopAll();
    pthread_sigmask(SIG_SETMASK, &original_mask_, nullptr);
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts a child named `name`, logging to `log_dir`/<name>.log. The first
  // child started is the coordinator. The reference stays valid.
  Child& Start(const std::string& name, const std::string& binary,
               const std::vector<std::string>& args, const std::string& log_dir) {
    children_.push_back(Child{.name = name, .log_path = log_dir + "/" + name + ".log"});
    Spawn(binary, args, original_mask_, &children_.back());
    return children_.back();
  }

  // Waits up to `timeout` for a signal or a child's end. Throws CommandError
  // (after stopping every child) when a child ended; returns true on SIGINT
  // or SIGTERM.
  bool Wait(std::chrono::milliseconds timeout) {
    const int signal_number = WaitForSignal(signals_, timeout);
    if (Child* ended = Reap(children_); ended != nullptr) {
      const std::string what =
          absl::StrCat(ended->name, " (pid ", ended->pid, ") ", DescribeExit(ended->wait_status));
      std::fprintf(stderr, "llamaproctl up: %s; the end of %s:\n%s", what.c_str(),
                   ended->log_path.c_str(), LogTail(ended->log_path, 15).c_str());
      std::fprintf(stderr, "llamaproctl up: stopping the other processes\n");
      StopAll();
      throw CommandError(absl::StrCat(what, " (log: ", ended->log_path, ")"));
    }
    return signal_number == SIGINT || signal_number == SIGTERM;
  }

  // Stops the workers, then the coordinator (the first child): SIGTERM, up
  // to kStopGrace for them to exit, then SIGKILL. A second SIGINT or SIGTERM
  // skips the wait.
  void StopAll() {
    std::vector<Child*> workers, coordinator;
    for (Child& child : children_) {
      (&child == &children_.front() ? coordinator : workers).push_back(&child);
    }
    Stop(workers);
    Stop(coordinator);
  }

  const std::deque<Child>& children() const { return children_; }

 private:
  void Stop(const std::vector<Child*>& group) {
    bool any = false;
    for (Child* child : group) {
      if (child->running) {
        kill(child->pid, SIGTERM);
        any = true;
      }
    }
    if (!any) return;
    const Clock::time_point deadline = Clock::now() + kStopGrace;
    bool hurry = false;
    while (!hurry && Clock::now() < deadline &&
           std::any_of(group.begin(), group.end(), [](Child* c) { return c->running; })) {
      const int signal_number = WaitForSignal(signals_, std::chrono::milliseconds(100));
      hurry = signal_number == SIGINT || signal_number == SIGTERM;
      Reap(children_);
    }
    for (Child* child : group) {
      if (!child->running) continue;
      std::fprintf(stderr, "llamaproctl up: %s (pid %d) %s; killing it\n", child->name.c_str(),
                   child->pid, hurry ? "still running" : "did not stop within 10 s of SIGTERM");
      kill(child->pid, SIGKILL);
      int status = 0;
      while (waitpid(child->pid, &status, 0) < 0 && errno == EINTR) {
      }
      child->running = false;
      child->wait_status = status;
    }
  }

  sigset_t signals_;
  sigset_t original_mask_;
  std::deque<Child> children_;  // The coordinator first; references stay valid.
};

// A host:port written by the coordinator, or "" while it is incomplete.
std::string ParseAddress(const std::string& text) {
  std::string address(absl::StripAsciiWhitespace(text));
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
      port <= 0 || port > 65535) {
    return "";
  }
  return address;
}

// The address to reach a coordinator listening on `address`: a wildcard
// host (0.0.0.0, [::], empty) becomes the loopback address.
std::string DialAddress(const std::string& address) {
  const size_t colon = address.rfind(':');
  const std::string host = address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::" || host == "*") {
    return absl::StrCat("127.0.0.1", address.substr(colon));
  }
  return address;
}

struct UpFlags {
  int workers = 0;
  std::string data_dir;
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen;
  std::vector<std::string> allowed_roots;
  std::string auth_token_file;
  int threads_per_worker = 0;
  int start_timeout = 60;
};

void RunUp(const UpFlags& flags) {
  namespace fs = std::filesystem;
  const std::string coordinator_binary = FindBinary("llamapro-coordinator", "coordinator");
  const std::string worker_binary = FindBinary("llamapro-worker", "worker");
  std::error_code ec;
  const std::string data_dir = fs::absolute(flags.data_dir).lexically_normal().string();
  const std::string log_dir = data_dir + "/logs";
  fs::create_directories(log_dir, ec);
  if (ec) throw CommandError(absl::StrCat("creating ", log_dir, ": ", ec.message()));
  std::string token_file;
  RemoteFlags remote;
  if (!flags.auth_token_file.empty()) {
    token_file = fs::absolute(flags.auth_token_file).lexically_normal().string();
    remote.auth_token_file = token_file;
  }
  const int threads =
      flags.threads_per_worker > 0
          ? flags.threads_per_worker
          : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / flags.workers);
  // Where the coordinator writes the addresses it serves on; stale ones from
  // an earlier run are removed first.
  const std::string port_file = data_dir + "/coordinator.address";
  const std::string metrics_port_file = data_dir + "/coordinator.metrics-address";
  for (const std::string& file : {port_file, metrics_port_file}) {
    fs::remove(file, ec);
    if (ec) throw CommandError(absl::StrCat("removing ", file, ": ", ec.message()));
  }

  Cluster cluster;
  const Clock::time_point give_up = Clock::now() + std::chrono::seconds(flags.start_timeout);
  const std::chrono::milliseconds poll(100);

  // 1. The coordinator, until it has written the address it listens on.
  std::vector<std::string> args = {
      "--listen",    flags.listen, "--data-dir",          data_dir,
      "--port-file", port_file,    "--metrics-port-file", metrics_port_file};
  if (!flags.metrics_listen.empty()) {
    args.insert(args.end(), {"--metrics-listen", flags.metrics_listen});
  }
  for (const std::string& root : flags.allowed_roots) {
    args.insert(args.end(), {"--allowed-root", fs::absolute(root).lexically_normal().string()});
  }
  if (!token_file.empty()) args.insert(args.end(), {"--auth-token-file", token_file});
  const Child& coordinator = cluster.Start("coordinator", coordinator_binary, args, log_dir);
  std::string listening;
  for (std::string previous;;) {
    if (cluster.Wait(poll)) return;  // SIGINT or SIGTERM: the destructor stops everything.
    auto text = ReadFile(port_file);
    const std::string address = text.ok() ? ParseAddress(*text) : "";
    // Two equal reads in a row: the file is not being written.
    if (!address.empty() && address == previous) {
      listening = address;
      break;
    }
    previous = address;
    if (Clock::now() > give_up) {
      throw CommandError(absl::StrCat("the coordinator did not write its address to ", port_file,
                                      " within ", flags.start_timeout,
                                      " s (log: ", coordinator.log_path, ")"));
    }
  }
  remote.coordinator = DialAddress(listening);

  // 2. The workers, until each has registered.
  std::vector<std::string> names;
  for (int i = 0; i < flags.workers; ++i) {
    const std::string name = absl::StrCat("worker-", i);
    std::vector<std::string> worker_args = {
        "--coordinator", remote.coordinator, "--name", name, "--device", "cpu", "--threads",
        absl::StrCat(threads),
        // Within our own grace before SIGKILL, so a task's end is reported.
        "--shutdown-grace", absl::StrCat(kStopGrace.count() - 2)};
    if (!token_file.empty())
      worker_args.insert(worker_args.end(), {"--auth-token-file", token_file});
    cluster.Start(name, worker_binary, worker_args, log_dir);
    names.push_back(name);
  }
  // gRPC's threads start only now, after the last fork.
  std::unique_ptr<client::CoordinatorClient> client;
  {
    client::ClientOptions options;
    options.connection.address = remote.coordinator;
    if (!token_file.empty()) {
      auto token = rpc::ReadTokenFile(token_file);
      ThrowIfError(token.status());
      options.connection.token = *std::move(token);
    }
    options.call_timeout = std::chrono::milliseconds(2000);
    options.retry_for = std::chrono::milliseconds(0);
    auto made = client::CoordinatorClient::Create(std::move(options));
    ThrowIfError(made.status());
    client = *std::move(made);
  }
  absl::Status last_error;
  for (;;) {
    if (cluster.Wait(poll)) return;
    auto response = client->ListWorkers();
    if (response.ok()) {
      absl::flat_hash_set<std::string> registered;
      for (const v1::WorkerInfo& worker : response->workers()) {
        if (worker.state() == v1::WORKER_STATE_IDLE || worker.state() == v1::WORKER_STATE_BUSY) {
          registered.insert(worker.name());
        }
      }
      std::vector<std::string> missing;
      for (const std::string& name : names) {
        if (!registered.contains(name)) missing.push_back(name);
      }
      if (missing.empty()) break;
      last_error =
          absl::NotFoundError(absl::StrCat("not registered: ", absl::StrJoin(missing, ", ")));
    } else {
      last_error = response.status();
    }
    if (Clock::now() > give_up) {
      throw CommandError(absl::StrCat("the workers did not all register within ",
                                      flags.start_timeout, " s (", last_error.message(),
                                      "; logs in ", log_dir, ")"));
    }
  }

  std::printf("llamapro is up: coordinator at %s (pid %d), %d CPU worker%s with %d thread%s each\n",
              remote.coordinator.c_str(), static_cast<int>(coordinator.pid), flags.workers,
              flags.workers == 1 ? "" : "s", threads, threads == 1 ? "" : "s");
  std::printf("  data dir  %s\n", data_dir.c_str());
  std::printf(
      "  logs      %s/{coordinator,%s}.log\n", log_dir.c_str(),
      flags.workers == 1 ? "worker-0" : absl::StrCat("worker-0..", flags.workers - 1).c_str());
  if (auto metrics = ReadFile(metrics_port_file); metrics.ok() && !ParseAddress(*metrics).empty()) {
    std::printf("  metrics   http://%s/metrics\n", DialAddress(ParseAddress(*metrics)).c_str());
  }
  std::printf("\nIn another shell:\n  export LLAMAPRO_COORDINATOR=%s\n",
              remote.coordinator.c_str());
  if (!token_file.empty())
    std::printf("  export LLAMAPRO_AUTH_TOKEN_FILE=%s\n", token_file.c_str());
  std::printf(
      "  llamaproctl workers\n  llamaproctl submit JOB.yaml --watch\n"
      "Relative paths in jobs are resolved against the data dir.\n"
      "Ctrl-C stops the workers, then the coordinator.\n");
  std::fflush(stdout);

  // 3. The foreground, until a signal or a child's end.
  while (!cluster.Wait(std::chrono::milliseconds(1000))) {
  }
  std::fprintf(stderr, "llamaproctl up: stopping the workers, then the coordinator\n");
  cluster.StopAll();
  for (const Child& child : cluster.children()) {
    std::fprintf(stderr, "  %s %s\n", child.name.c_str(), DescribeExit(child.wait_status).c_str());
  }
}

}  // namespace

void AddClusterCommands(CLI::App& app) {
  {
    auto flags = std::make_shared<WorkersFlags>();
    CLI::App* cmd =
        app.add_subcommand("workers", "List the workers registered with the coordinator.");
    AddRemoteFlags(cmd, &flags->remote);
    cmd->callback([flags] { RunWorkers(*flags); });
  }
  {
    auto flags = std::make_shared<UpFlags>();
    CLI::App* cmd = app.add_subcommand(
        "up",
        "Run a local coordinator and N CPU workers in the foreground until Ctrl-C (logs in "
        "DIR/logs/).");
    cmd->add_option("--workers", flags->workers, "Worker processes (one CPU worker each)")
        ->required()
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--data-dir", flags->data_dir,
                    "The coordinator's data dir (job store, token store, checkpoints; created if "
                    "missing)")
        ->required();
    cmd->add_option("--listen", flags->listen, "Address the coordinator serves gRPC on")
        ->capture_default_str();
    cmd->add_option("--metrics-listen", flags->metrics_listen,
                    "Address of the coordinator's Prometheus /metrics (default: the coordinator's, "
                    "127.0.0.1:9464)");
    cmd->add_option("--allowed-root", flags->allowed_roots,
                    "Another directory jobs may name, besides the data dir (repeatable)");
    cmd->add_option("--auth-token-file", flags->auth_token_file,
                    "Bearer token the coordinator requires, given to the workers too");
    cmd->add_option("--threads-per-worker", flags->threads_per_worker,
                    "Threads of each worker (0: the cores divided among the workers)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();
    cmd->add_option("--start-timeout", flags->start_timeout,
                    "Seconds to wait for the coordinator to serve and every worker to register")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
    cmd->callback([flags] { RunUp(*flags); });
  }
}

}  // namespace llamapro::cli
