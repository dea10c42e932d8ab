// llamapro-coordinator: the control-plane daemon. See docs/coordinator.md.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/version.h"
#include "coordinator/server.h"
#include "rpc/rpc.h"

namespace {

struct Flags {
  std::string listen = "127.0.0.1:50051";
  std::string data_dir;
  std::vector<std::string> allowed_roots;
  std::string metrics_listen = "127.0.0.1:9464";
  std::string auth_token_file;
  std::string tls_cert, tls_key;
  double heartbeat_timeout = 30;
  double adoption_grace = 15;
  int ingest_threads = 0;
  std::string port_file, metrics_port_file;
};

void Fail(const std::string& message) {
  std::fprintf(stderr, "llamapro-coordinator: error: %s\n", message.c_str());
}

int Run(int argc, char** argv) {
  Flags flags;
  CLI::App app{
      "llamapro-coordinator: schedules expand / pretrain / sft / eval / ingest jobs onto "
      "llamapro-worker processes.\nSee docs/coordinator.md for every flag."};
  app.set_version_flag("--version", std::string("llamapro-coordinator ") + llamapro::kVersion);
  app.add_option("--listen", flags.listen,
                 "gRPC address (host:port; port 0 picks a free one). Loopback by default: "
                 "use 0.0.0.0:50051 to serve other machines")
      ->capture_default_str();
  app.add_option("--data-dir", flags.data_dir,
                 "Directory of the job database, the token store and, by default, every path a "
                 "job names (created if missing)")
      ->required();
  app.add_option("--allowed-root", flags.allowed_roots,
                 "Another directory job specs may name (repeatable); everything else outside "
                 "--data-dir is refused");
  app.add_option("--metrics-listen", flags.metrics_listen,
                 "Prometheus /metrics address (host:port; empty disables)")
      ->capture_default_str();
  app.add_option("--auth-token-file", flags.auth_token_file,
                 "File holding the bearer token every RPC must carry (authorization: Bearer "
                 "<token>); unset: no authentication");
  app.add_option("--tls-cert", flags.tls_cert, "PEM certificate chain: serve gRPC over TLS");
  app.add_option("--tls-key", flags.tls_key, "PEM private key of --tls-cert");
  app.add_option("--heartbeat-timeout", flags.heartbeat_timeout,
                 "Seconds without a heartbeat before a worker is lost and its job restarted")
      ->capture_default_str()
      ->check(CLI::Range(0.2, 3600.0));
  app.add_option("--adoption-grace", flags.adoption_grace,
                 "After a restart, extra seconds (beyond --heartbeat-timeout) the ranks of a "
                 "running attempt have to report back before it is restarted")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  app.add_option("--ingest-threads", flags.ingest_threads,
                 "Tokenizing threads of ingest jobs (0: all cores)")
      ->capture_default_str();
  app.add_option("--port-file", flags.port_file,
                 "Write the bound gRPC host:port here once serving (for scripts and tests)");
  app.add_option("--metrics-port-file", flags.metrics_port_file,
                 "Write the bound metrics host:port here once serving");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  // Signals are taken by a thread of our own (sigwait), not by handlers.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  llamapro::coordinator::ServerOptions options;
  options.listen = flags.listen;
  options.data_dir = flags.data_dir;
  options.allowed_roots = flags.allowed_roots;
  options.metrics_listen = flags.metrics_listen;
  options.tls_cert = flags.tls_cert;
  options.tls_key = flags.tls_key;
  options.heartbeat_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(flags.heartbeat_timeout * 1000));
  options.adoption_grace =
      std::chrono::milliseconds(static_cast<int64_t>(flags.adoption_grace * 1000));
  options.ingest_threads = flags.ingest_threads;
  if (!flags.auth_token_file.empty()) {
    auto token = llamapro::rpc::ReadTokenFile(flags.auth_token_file);
    if (!token.ok()) {
      Fail(absl::StrCat("--auth-token-file: ", token.status().message()));
      return 1;
    }
    options.auth_token = *token;
  }
  auto server = llamapro::coordinator::Server::Start(options);
  if (!server.ok()) {
    Fail(std::string(server.status().message()));
    return 1;
  }
  std::fprintf(
      stderr, "llamapro-coordinator %s: serving gRPC on %s%s%s, metrics on %s, data in %s\n",
      llamapro::kVersion, (*server)->address().c_str(), flags.tls_cert.empty() ? "" : " (TLS)",
      options.auth_token.empty() ? "" : " (bearer token required)",
      (*server)->metrics_address().empty() ? "(off)" : (*server)->metrics_address().c_str(),
      options.data_dir.c_str());
  for (const auto& [path, value] :
       {std::pair{flags.port_file, (*server)->address()},
        std::pair{flags.metrics_port_file, (*server)->metrics_address()}}) {
    if (path.empty()) continue;
    absl::Status written = llamapro::WriteFileAtomic(path, value + "\n");
    if (!written.ok()) {
      Fail(std::string(written.message()));
      return 1;
    }
  }
  int signal = 0;
  sigwait(&signals, &signal);
  std::fprintf(stderr, "llamapro-coordinator: %s received, shutting down\n",
               signal == SIGINT ? "SIGINT" : "SIGTERM");
  (*server)->Shutdown(std::chrono::seconds(5));
  server->reset();
  std::fprintf(stderr, "llamapro-coordinator: stopped\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llamapro-coordinator: internal error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "llamapro-coordinator: internal error: unknown exception\n");
  }
  return 2;
}
