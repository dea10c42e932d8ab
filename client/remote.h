// What the commands that talk to a coordinator (submit, jobs, get, watch,
// cancel, workers, up) share: the connection flags, JSON output of proto
// messages, tables, and human-readable names and times.
#ifndef LLAMAPRO_CLIENT_REMOTE_H_
#define LLAMAPRO_CLIENT_REMOTE_H_

#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/string_view.h"
#include "client/coordinator_client.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "llamapro/v1/jobs.pb.h"
#include "llamapro/v1/workers.pb.h"

namespace llamapro::cli {

// The coordinator's address when neither --coordinator nor
// $LLAMAPRO_COORDINATOR gives one.
inline constexpr char kDefaultCoordinator[] = "127.0.0.1:50051";

struct RemoteFlags {
  std::string coordinator;      // host:port
  std::string auth_token_file;  // Empty: no token.
  std::string tls_ca;
  bool tls = false;
  std::string tls_server_name;
  bool json = false;
};

// Registers --coordinator (default $LLAMAPRO_COORDINATOR, else
// kDefaultCoordinator), --auth-token-file (default $LLAMAPRO_AUTH_TOKEN_FILE),
// --tls-ca, --tls, --tls-server-name and, when `json_flag`, --json.
void AddRemoteFlags(CLI::App* cmd, RemoteFlags* flags, bool json_flag = true);

// A client for the flags (token file read, channel made); throws
// CommandError when the token or a TLS file cannot be read.
std::unique_ptr<client::CoordinatorClient> Connect(const RemoteFlags& flags);

// `message` as one line of JSON (proto3 JSON mapping with the .proto field
// names, fields at their defaults included, enums by name). Throws
// CommandError should the conversion fail.
std::string ToJson(const google::protobuf::Message& message);
// Prints ToJson(message) and a newline to stdout, flushed.
void PrintJson(const google::protobuf::Message& message);

// "PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED".
std::string JobStateName(v1::JobState state);
// "IDLE", "BUSY", "LOST".
std::string WorkerStateName(v1::WorkerState state);
// JOB_STATE_* for a name as JobStateName writes it, case-insensitive;
// JOB_STATE_UNSPECIFIED for anything else.
v1::JobState ParseJobState(absl::string_view name);

// Seconds since the Unix epoch; 0 for an unset timestamp.
double EpochSeconds(const google::protobuf::Timestamp& time);
double NowEpochSeconds();
// "45s", "12m", "3h", "2d" (rounded down); "-" for a negative span.
std::string FormatAge(double seconds);
// "1h02m", "3m07s", "12s".
std::string FormatDuration(double seconds);
// Local time "2024-05-01 12:03:04"; "-" for an unset timestamp.
std::string FormatTime(const google::protobuf::Timestamp& time);

// Prints `rows` (the first is the header) as left-aligned columns separated
// by two spaces; the last column is not padded.
void PrintTable(const std::vector<std::vector<std::string>>& rows);

}  // namespace llamapro::cli

#endif  // LLAMAPRO_CLIENT_REMOTE_H_
