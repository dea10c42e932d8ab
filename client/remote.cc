#include "client/remote.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "client/commands.h"
#include "google/protobuf/util/json_util.h"
#include "rpc/rpc.h"

namespace llamapro::cli {
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

}  // namespace

void AddRemoteFlags(CLI::App* cmd, RemoteFlags* flags, bool json_flag) {
  flags->coordinator = Env("LLAMAPRO_COORDINATOR");
  if (flags->coordinator.empty()) flags->coordinator = kDefaultCoordinator;
  flags->auth_token_file = Env("LLAMAPRO_AUTH_TOKEN_FILE");
  cmd->add_option("--coordinator", flags->coordinator,
                  "Coordinator address host:port (default: $LLAMAPRO_COORDINATOR, else " +
                      std::string(kDefaultCoordinator) + ")")
      ->capture_default_str();
  cmd->add_option("--auth-token-file", flags->auth_token_file,
                  "File holding the bearer token (default: $LLAMAPRO_AUTH_TOKEN_FILE)")
      ->capture_default_str();
  cmd->add_option("--tls-ca", flags->tls_ca,
                  "PEM bundle to verify the coordinator's certificate (enables TLS)");
  cmd->add_flag("--tls", flags->tls, "TLS with the system's root certificates");
  cmd->add_option("--tls-server-name", flags->tls_server_name,
                  "Name expected in the coordinator's certificate (default: the host)");
  if (json_flag) {
    cmd->add_flag("--json", flags->json, "Machine-readable output: proto messages as JSON");
  }
}

std::unique_ptr<client::CoordinatorClient> Connect(const RemoteFlags& flags) {
  client::ClientOptions options;
  options.connection.address = flags.coordinator;
  options.connection.tls = flags.tls;
  options.connection.tls_ca = flags.tls_ca;
  options.connection.tls_server_name = flags.tls_server_name;
  if (!flags.auth_token_file.empty()) {
    auto token = rpc::ReadTokenFile(flags.auth_token_file);
    ThrowIfError(token.status());
    options.connection.token = *std::move(token);
  }
  auto client = client::CoordinatorClient::Create(std::move(options));
  ThrowIfError(client.status());
  return *std::move(client);
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    throw CommandError(absl::StrFormat("converting a %s to JSON: %s",
                                       message.GetDescriptor()->full_name(),
                                       std::string(status.message())));
  }
  return json;
}

void PrintJson(const google::protobuf::Message& message) {
  const std::string json = ToJson(message);
  std::printf("%s\n", json.c_str());
  std::fflush(stdout);
}

std::string JobStateName(v1::JobState state) {
  constexpr absl::string_view kPrefix = "JOB_STATE_";
  const std::string& name = v1::JobState_Name(state);
  if (name.empty()) return absl::StrFormat("STATE_%d", static_cast<int>(state));
  return name.substr(std::min(name.size(), kPrefix.size()));
}

std::string WorkerStateName(v1::WorkerState state) {
  constexpr absl::string_view kPrefix = "WORKER_STATE_";
  const std::string& name = v1::WorkerState_Name(state);
  if (name.empty()) return absl::StrFormat("STATE_%d", static_cast<int>(state));
  return name.substr(std::min(name.size(), kPrefix.size()));
}

v1::JobState ParseJobState(absl::string_view name) {
  const std::string upper = absl::AsciiStrToUpper(name);
  for (v1::JobState state : {v1::JOB_STATE_PENDING, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED,
                             v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED}) {
    if (JobStateName(state) == upper) return state;
  }
  return v1::JOB_STATE_UNSPECIFIED;
}

double EpochSeconds(const google::protobuf::Timestamp& time) {
  return static_cast<double>(time.seconds()) + time.nanos() * 1e-9;
}

double NowEpochSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string FormatAge(double seconds) {
  if (seconds < 0) return "-";
  const auto s = static_cast<int64_t>(seconds);
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm", s / 60);
  if (s < 86400) return absl::StrFormat("%dh", s / 3600);
  return absl::StrFormat("%dd", s / 86400);
}

std::string FormatDuration(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

std::string FormatTime(const google::protobuf::Timestamp& time) {
  if (time.seconds() == 0 && time.nanos() == 0) return "-";
  const std::time_t t = static_cast<std::time_t>(time.seconds());
  std::tm local{};
  localtime_r(&t, &local);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%S", &local);
  return text;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

}  // namespace llamapro::cli
