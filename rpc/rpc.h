// What the daemons and the client share about talking gRPC to each other:
// status conversion, channel and server credentials (bearer token, TLS),
// message size limits. Only coordinator/, worker/ and client/ include this
// (DESIGN.md: nothing in the engine knows about gRPC).
#ifndef LLAMAPRO_RPC_RPC_H_
#define LLAMAPRO_RPC_RPC_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"
#include "llamapro/v1/jobs.pb.h"

namespace llamapro::rpc {

// Largest message either side accepts (a SampleBatch of 4096 samples of
// seq_len 4096 is 4096 * 4097 * 5 bytes ~ 84 MB; batches are smaller in
// practice, the DataService splits streams well below this).
inline constexpr int kMaxMessageBytes = 128 << 20;

// The metadata key and scheme of the bearer token (RFC 6750).
inline constexpr char kAuthorizationKey[] = "authorization";
inline constexpr char kBearerPrefix[] = "Bearer ";

absl::Status FromGrpc(const grpc::Status& status);
grpc::Status ToGrpc(const absl::Status& status);

// How a client (llamaproctl, a worker) reaches the coordinator.
struct ConnectionOptions {
  std::string address = "127.0.0.1:50051";  // host:port
  std::string token;                        // Bearer token; empty: none sent.
  std::string tls_ca;                       // PEM bundle to verify the server; empty: plaintext
                                            // unless `tls` (then the system roots).
  bool tls = false;
  std::string tls_server_name;  // Overrides the name checked in the certificate.
};

// Reads a token file: its content with surrounding whitespace removed. An
// empty file, or one that cannot be read, is an error naming it.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// A channel with the message size limits above and keepalive pings (so a
// dead coordinator is noticed on long streams). Fails only on unreadable
// TLS files.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ConnectionOptions& options);

// Sets the bearer token (when there is one) and a deadline `timeout` from
// now (zero: none) on a client context.
void PrepareContext(grpc::ClientContext* context, const ConnectionOptions& options,
                    std::chrono::milliseconds timeout);

// Server side: TLS when both files are given (PEM), insecure otherwise.
// An unreadable or empty file is an error naming it.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const std::string& cert_file, const std::string& key_file);

// Checks a server call's bearer token against `expected` (empty: no auth,
// always OK). UNAUTHENTICATED when it is missing or wrong; compared in
// constant time.
grpc::Status CheckBearerToken(const grpc::ServerContextBase& context, absl::string_view expected);

// "expand", "pretrain", "sft", "eval", "ingest" (the enum name without its
// JOB_KIND_ prefix, lower case); "unspecified" for JOB_KIND_UNSPECIFIED.
std::string JobKindName(v1::JobKind kind);

}  // namespace llamapro::rpc

#endif  // LLAMAPRO_RPC_RPC_H_
