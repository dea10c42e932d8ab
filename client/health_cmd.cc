// `llamaproctl health`: the probe of container health checks and scripts.
// With --coordinator (the default): the standard gRPC health service
// (grpc.health.v1.Health/Check), which needs no token. With --metrics: an
// HTTP GET of a worker's (or the coordinator's) /metrics page, which answers
// while the process serves, whether or not the coordinator is reachable.
// Prints one line; exit status 0 when healthy, 1 otherwise.
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/commands.h"
#include "client/remote.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/rpc.h"

namespace llamapro::cli {
namespace {

struct HealthFlags {
  RemoteFlags remote;
  std::string service;
  std::string metrics;  // host:port; set: probe HTTP /metrics instead.
  double timeout = 5;
};

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

void CheckGrpc(const HealthFlags& flags) {
  rpc::ConnectionOptions connection;
  connection.address = flags.remote.coordinator;
  connection.tls = flags.remote.tls;
  connection.tls_ca = flags.remote.tls_ca;
  connection.tls_server_name = flags.remote.tls_server_name;
  auto channel = rpc::MakeChannel(connection);
  ThrowIfError(channel.status());
  auto stub = grpc::health::v1::Health::NewStub(*channel);
  grpc::ClientContext context;
  rpc::PrepareContext(&context, connection, Millis(flags.timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(flags.service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  const std::string what = absl::StrCat(
      "coordinator ", flags.remote.coordinator,
      flags.service.empty() ? std::string() : absl::StrCat(" service \"", flags.service, "\""));
  if (!status.ok()) {
    throw CommandError(absl::StrCat(what, ": health check failed: ", status.error_message(), " (",
                                    absl::StatusCodeToString(rpc::FromGrpc(status).code()), ")"));
  }
  const std::string state =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    throw CommandError(absl::StrCat(what, ": ", state));
  }
  std::printf("%s: %s\n", what.c_str(), state.c_str());
}

struct Socket {
  explicit Socket(int f) : fd(f) {}
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() {
    if (fd >= 0) close(fd);
  }
  int fd;
};

// Waits until `fd` is ready for `events`, up to `deadline`.
bool WaitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{.fd = fd, .events = events, .revents = 0};
    const int n = poll(&p, 1, static_cast<int>(left.count()));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

// GET http://address/metrics; returns the status line's code. Throws with
// the reason when the page cannot be fetched.
int HttpStatus(const std::string& address, double timeout) {
  const auto deadline = std::chrono::steady_clock::now() + Millis(timeout);
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    throw CommandError(absl::StrCat("--metrics must be host:port, got \"", address, "\""));
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  const std::string port = address.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    throw CommandError(absl::StrCat("--metrics ", address, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> list(found, freeaddrinfo);
  std::string error = "no address";
  for (const addrinfo* ai = list.get(); ai != nullptr; ai = ai->ai_next) {
    const Socket socket_fd(
        socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const int fd = socket_fd.fd;
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      error = std::strerror(errno);
      continue;
    }
    int so_error = 0;
    socklen_t len = sizeof(so_error);
    if (!WaitFor(fd, POLLOUT, deadline)) {
      error = "timed out connecting";
      continue;
    }
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
    if (so_error != 0) {
      error = std::strerror(so_error);
      continue;
    }
    const std::string request =
        absl::StrCat("GET /metrics HTTP/1.0\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
    size_t sent = 0;
    while (sent < request.size()) {
      if (!WaitFor(fd, POLLOUT, deadline)) throw CommandError(address + ": timed out sending");
      const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        throw CommandError(absl::StrCat(address, ": ", std::strerror(errno)));
      }
      if (n > 0) sent += static_cast<size_t>(n);
    }
    std::string head;
    char buffer[512];
    while (head.find("\r\n") == std::string::npos && head.size() < 4096) {
      if (!WaitFor(fd, POLLIN, deadline)) throw CommandError(address + ": timed out reading");
      const ssize_t n = recv(fd, buffer, sizeof(buffer), 0);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        throw CommandError(absl::StrCat(address, ": ", std::strerror(errno)));
      }
      head.append(buffer, static_cast<size_t>(n));
    }
    // "HTTP/1.1 200 OK"
    const std::vector<std::string> parts =
        absl::StrSplit(head.substr(0, head.find("\r\n")), absl::MaxSplits(' ', 2));
    int code = 0;
    if (parts.size() < 2 || !absl::StartsWith(parts[0], "HTTP/") ||
        !absl::SimpleAtoi(parts[1], &code)) {
      throw CommandError(absl::StrCat(address, ": not an HTTP response"));
    }
    return code;
  }
  throw CommandError(absl::StrCat("--metrics ", address, ": cannot connect: ", error));
}

void CheckMetrics(const HealthFlags& flags) {
  const int code = HttpStatus(flags.metrics, flags.timeout);
  if (code != 200) {
    throw CommandError(absl::StrCat("http://", flags.metrics, "/metrics answered HTTP ", code));
  }
  std::printf("http://%s/metrics: HTTP 200\n", flags.metrics.c_str());
}

}  // namespace

void AddHealthCommand(CLI::App& app) {
  auto flags = std::make_shared<HealthFlags>();
  CLI::App* cmd = app.add_subcommand(
      "health",
      "Probe a coordinator's gRPC health service (or, with --metrics, a /metrics page); exit 0 "
      "when healthy, 1 otherwise.");
  AddRemoteFlags(cmd, &flags->remote, /*json_flag=*/false);
  cmd->add_option("--service", flags->service,
                  "Health service name to check (empty: the whole server)");
  cmd->add_option("--metrics", flags->metrics,
                  "Instead: GET http://HOST:PORT/metrics (a worker's or the coordinator's) and "
                  "require HTTP 200");
  cmd->add_option("--timeout", flags->timeout, "Seconds to wait for the answer")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  cmd->callback([flags] {
    if (!flags->metrics.empty()) {
      CheckMetrics(*flags);
    } else {
      CheckGrpc(*flags);
    }
  });
}

}  // namespace llamapro::cli
