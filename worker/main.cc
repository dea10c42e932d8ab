// llamapro-worker: one process per device; registers with the coordinator,
// heartbeats, runs what it is assigned. See docs/worker.md.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "base/file.h"
#include "base/version.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/ops.h"
#include "train/config.h"
#ifdef LLAMAPRO_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif
#include "rpc/rpc.h"
#include "worker/agent.h"
#include "worker/metrics.h"

namespace {

using llamapro::worker::WorkerAgent;
using llamapro::worker::WorkerMetrics;
using llamapro::worker::WorkerOptions;

constexpr char kDefaultCoordinator[] = "127.0.0.1:50051";

struct Flags {
  std::string coordinator;
  std::string device = "cpu";
  std::string name;
  std::string auth_token_file;
  std::string tls_ca;
  bool tls = false;
  std::string tls_server_name;
  std::string metrics_listen = "127.0.0.1:0";
  std::string collective_address = "127.0.0.1";
  int collective_timeout = 300;
  int threads = 0;
  int shutdown_grace = 20;
  std::string port_file;
  std::string ready_file;
  double peak_flops = 0;
};

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

// The log line format of the agent, for what happens before it exists.
void LogLine(const std::string& name, const std::string& line) {
  const std::string text =
      absl::StrCat(absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone()), " ",
                   name, ": ", line, "\n");
  std::fwrite(text.data(), 1, text.size(), stderr);
}

// `cpu`, or `cuda:N` naming a device this machine has (in a build with the
// CUDA backend).
absl::Status CheckDevice(const std::string& device) {
  absl::StatusOr<int> ordinal = llamapro::DeviceOrdinal(device);
  if (!ordinal.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda:N, got \"", device, "\""));
  }
  if (*ordinal < 0) return absl::OkStatus();
#ifdef LLAMAPRO_HAVE_CUDA
  const int count = llamapro::cuda::DeviceCount();
  if (*ordinal >= count) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device ", device, ": this machine has ", count, " usable CUDA device",
                     count == 1 ? "" : "s", count == 0 ? " (no driver, or no GPU)" : ""));
  }
  return absl::OkStatus();
#else
  return absl::FailedPreconditionError(
      absl::StrCat("--device ", device,
                   ": this build has no CUDA backend (build with -DLLAMAPRO_CUDA=ON where nvcc "
                   "exists: docs/build.md); run this worker with --device cpu"));
#endif
}

// The FLOP/s of a square fp32 GEMM on `threads` threads (0: every core):
// the best of repeated 1024^3 products over about 0.25 s. What the engine's
// matrix multiplications reach here, so MFU is measured against the
// achievable peak of this machine rather than a datasheet's.
double MeasureCpuPeakFlops(int threads) {
  constexpr int64_t kN = 1024;
  std::vector<float> a(kN * kN), b(kN * kN), c(kN * kN);
  for (int64_t i = 0; i < kN * kN; ++i) {
    a[i] = static_cast<float>(i % 7) * 0.25f - 0.75f;
    b[i] = static_cast<float>(i % 5) * 0.5f - 1.0f;
  }
  llamapro::cpu::SetNumThreads(threads);
  double best = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int rep = 0; rep < 50; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    llamapro::cpu::Sgemm(false, false, kN, kN, kN, 1.0f, a.data(), kN, b.data(), kN, 0.0f, c.data(),
                         kN);
    const auto t1 = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(t1 - t0).count();
    if (seconds > 0) best = std::max(best, 2.0 * kN * kN * kN / seconds);
    if (rep >= 2 && t1 - start > std::chrono::milliseconds(250)) break;
  }
  return best;
}

int Run(int argc, char** argv) {
  // SIGTERM and SIGINT are taken by one thread (sigwait below); blocked here,
  // before any other thread starts, so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Flags flags;
  flags.coordinator = Env("LLAMAPRO_COORDINATOR");
  if (flags.coordinator.empty()) flags.coordinator = kDefaultCoordinator;
  flags.auth_token_file = Env("LLAMAPRO_AUTH_TOKEN_FILE");
  flags.name = absl::StrCat(llamapro::worker::HostName(), "-", getpid());

  CLI::App app{
      "llamapro-worker: runs the tasks a llamapro coordinator assigns (expand, pretrain, sft, "
      "eval) on one device.\nSee docs/worker.md."};
  app.set_version_flag("--version", std::string("llamapro-worker ") + llamapro::kVersion);
  app.add_option("--coordinator", flags.coordinator,
                 absl::StrCat("Coordinator address host:port (default: $LLAMAPRO_COORDINATOR, "
                              "else ",
                              kDefaultCoordinator, ")"))
      ->capture_default_str();
  app.add_option("--device", flags.device,
                 "Device this worker runs on: cpu, or cuda:N (GPU N; builds with the CUDA backend)")
      ->capture_default_str();
  app.add_option("--name", flags.name, "Unique worker name (default: <hostname>-<pid>)")
      ->capture_default_str();
  app.add_option("--auth-token-file", flags.auth_token_file,
                 "File holding the bearer token (default: $LLAMAPRO_AUTH_TOKEN_FILE)")
      ->capture_default_str();
  app.add_option("--tls-ca", flags.tls_ca,
                 "PEM bundle to verify the coordinator's certificate (enables TLS)");
  app.add_flag("--tls", flags.tls, "TLS with the system's root certificates");
  app.add_option("--tls-server-name", flags.tls_server_name,
                 "Name expected in the coordinator's certificate (default: the host)");
  app.add_option(
         "--metrics-listen", flags.metrics_listen,
         "Serve Prometheus /metrics on host:port (port 0 picks one; the address is reported to "
         "the coordinator and shown by llamaproctl workers); empty: none")
      ->capture_default_str();
  app.add_option("--collective-address", flags.collective_address,
                 "Address other ranks reach this worker's Gloo endpoint at")
      ->capture_default_str();
  app.add_option("--collective-timeout", flags.collective_timeout,
                 "Seconds a collective (or joining the ranks) may wait for the other ranks")
      ->check(CLI::Range(1, 86400))
      ->capture_default_str();
  app.add_option("--threads", flags.threads,
                 "Compute threads per task (0: the job config's, else all cores)")
      ->check(CLI::Range(0, 65536))
      ->capture_default_str();
  app.add_option("--shutdown-grace", flags.shutdown_grace,
                 "Seconds SIGTERM waits for the running task to stop before reporting it")
      ->check(CLI::Range(0, 3600))
      ->capture_default_str();
  app.add_option("--peak-flops", flags.peak_flops,
                 "Peak FLOP/s of the device, the denominator of MFU (e.g. 989e12); 0: measured "
                 "at start on cpu (an fp32 GEMM), unknown on cuda")
      ->check(CLI::Range(0.0, 1e18))
      ->capture_default_str();
  app.add_option("--port-file", flags.port_file,
                 "Write the /metrics address (host:port) here once it serves");
  app.add_option("--ready-file", flags.ready_file,
                 "Write the worker id here once registered with the coordinator");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  auto fail = [&](const absl::Status& status) {
    LogLine(flags.name, absl::StrCat("error: ", status.message()));
    return 2;
  };
  if (absl::Status device = CheckDevice(flags.device); !device.ok()) return fail(device);
  if (const int ordinal = *llamapro::DeviceOrdinal(flags.device); ordinal >= 0) {
    flags.device = absl::StrCat("cuda:", ordinal);  // "cuda" and "CUDA:0" are cuda:0.
  }
  if (flags.name.empty()) return fail(absl::InvalidArgumentError("--name must not be empty"));
  if (!flags.port_file.empty() && flags.metrics_listen.empty()) {
    return fail(absl::InvalidArgumentError("--port-file needs --metrics-listen"));
  }

  WorkerOptions options;
  options.coordinator.address = flags.coordinator;
  options.coordinator.tls = flags.tls;
  options.coordinator.tls_ca = flags.tls_ca;
  options.coordinator.tls_server_name = flags.tls_server_name;
  if (!flags.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = llamapro::rpc::ReadTokenFile(flags.auth_token_file);
    if (!token.ok()) return fail(token.status());
    options.coordinator.token = *std::move(token);
  }
  options.name = flags.name;
  options.device = flags.device;
  options.collective_address = flags.collective_address;
  options.collective_timeout = std::chrono::seconds(flags.collective_timeout);
  options.threads = flags.threads;
  options.shutdown_grace = std::chrono::seconds(flags.shutdown_grace);
  options.peak_flops = flags.peak_flops;
  if (options.peak_flops == 0 && flags.device == "cpu") {
    options.peak_flops = MeasureCpuPeakFlops(flags.threads);
    LogLine(flags.name,
            absl::StrCat("peak ", absl::SixDigits(options.peak_flops / 1e9),
                         " GFLOP/s (measured: fp32 GEMM, ",
                         flags.threads > 0 ? absl::StrCat(flags.threads) : std::string("all"),
                         " threads; --peak-flops overrides)"));
  }

#ifdef LLAMAPRO_HAVE_CUDA
  if (const int ordinal = *llamapro::DeviceOrdinal(flags.device);
      options.peak_flops == 0 && ordinal >= 0) {
    options.peak_flops = llamapro::cuda::PeakBf16Flops(ordinal);
    LogLine(
        flags.name,
        options.peak_flops > 0
            ? absl::StrCat("peak ", absl::SixDigits(options.peak_flops / 1e12),
                           " TFLOP/s (dense bf16 of ", llamapro::cuda::DeviceDescription(ordinal),
                           "; --peak-flops overrides)")
            : absl::StrCat("peak FLOP/s of ", llamapro::cuda::DeviceDescription(ordinal),
                           " unknown: MFU reads 0 (set --peak-flops)"));
  }
#endif
  WorkerMetrics metrics(flags.name, flags.device);
  options.metrics = &metrics;
  if (!flags.metrics_listen.empty()) {
    absl::StatusOr<std::string> address = metrics.Serve(flags.metrics_listen);
    if (!address.ok()) return fail(address.status());
    options.metrics_address = *address;
    LogLine(flags.name, absl::StrCat("serving /metrics on http://", *address, "/metrics"));
    if (!flags.port_file.empty()) {
      if (absl::Status written = llamapro::WriteFileAtomic(flags.port_file, *address + "\n");
          !written.ok()) {
        return fail(written);
      }
    }
  }
  if (!flags.ready_file.empty()) {
    const std::string ready_file = flags.ready_file;
    const std::string name = flags.name;
    options.on_registered = [ready_file, name](const std::string& worker_id) {
      absl::Status written = llamapro::WriteFileAtomic(ready_file, worker_id + "\n");
      if (!written.ok())
        LogLine(name, absl::StrCat("cannot write --ready-file: ", written.message()));
    };
  }
  absl::StatusOr<std::unique_ptr<WorkerAgent>> agent = WorkerAgent::Create(std::move(options));
  if (!agent.ok()) return fail(agent.status());

  std::stop_source stop;
  // It may outlive Run (detached, for a second signal): it owns copies of
  // what it needs then, and touches `stop` only before the first signal.
  std::thread signal_thread([signals, &stop, name = flags.name] {
    for (int received = 0;; ++received) {
      int signal = 0;
      if (sigwait(&signals, &signal) != 0) return;
      if (received == 0 && stop.stop_requested()) return;  // Woken by main to exit.
      if (received > 0) {
        LogLine(name, absl::StrCat("second ", strsignal(signal), ": exiting now"));
        std::fflush(stderr);
        std::_Exit(1);
      }
      LogLine(name, absl::StrCat(strsignal(signal), ": stopping"));
      stop.request_stop();
    }
  });
  const absl::Status status = (*agent)->Run(stop.get_token());
  const bool task_running = (*agent)->task_running();
  if (!stop.stop_requested()) {
    stop.request_stop();
    // Ends its sigwait (SIGTERM is blocked in every thread: it cannot kill).
    // NOLINTNEXTLINE(bugprone-bad-signal-to-kill-thread)
    pthread_kill(signal_thread.native_handle(), SIGTERM);
    signal_thread.join();
  } else {
    signal_thread.detach();  // Stays to handle a second signal.
  }
  if (!status.ok()) {
    LogLine(flags.name, absl::StrCat("error: ", status.message()));
    return 1;
  }
  if (task_running) {
    // The task did not stop in time; the agent would wait for it.
    std::fflush(stderr);
    std::_Exit(0);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llamapro-worker: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "llamapro-worker: internal error: unknown exception\n");
  }
  return 2;
}
