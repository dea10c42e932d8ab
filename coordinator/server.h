// The coordinator daemon minus its flags: opens the data dir's RocksDB,
// builds the Coordinator, serves JobService, WorkerService,
// RendezvousService and DataService over gRPC (plus the standard health
// service and server reflection), and /metrics over HTTP. Used by
// coordinator/main.cc and by tests that run a coordinator in process.
#ifndef LLAMAPRO_COORDINATOR_SERVER_H_
#define LLAMAPRO_COORDINATOR_SERVER_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/coordinator.h"
#include "coordinator/metrics.h"
#include "data/data_source.h"
#include "data/store.h"
#include "grpcpp/grpcpp.h"

namespace llamapro::coordinator {

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";         // host:port; port 0 picks one.
  std::string data_dir;                           // Required; created if missing.
  std::vector<std::string> allowed_roots;         // Besides the data dir.
  std::string metrics_listen = "127.0.0.1:9464";  // Empty: no /metrics.
  std::string auth_token;                         // Empty: no authentication.
  std::string tls_cert, tls_key;                  // PEM files; both or neither.
  std::chrono::milliseconds heartbeat_timeout{30000};
  std::chrono::milliseconds adoption_grace{15000};  // CoordinatorOptions.
  int ingest_threads = 0;
};

// Thread-safe.
class Server {
 public:
  // Everything is serving when this returns. Errors name the flag or file
  // at fault (an address in use, a data dir another coordinator holds).
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  // Shuts down (if Shutdown was not called) and releases the database.
  ~Server();

  // host:port actually bound (the port chosen when 0 was asked for).
  const std::string& address() const { return address_; }
  const std::string& metrics_address() const { return metrics_address_; }
  Coordinator& coordinator() { return *coordinator_; }
  Metrics& metrics() { return *metrics_; }

  // Stops accepting calls, ends streams within `grace`, stops the scheduler.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  Server() = default;
  class Services;

  std::unique_ptr<TokenStore> store_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<StoreDataSource> data_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_, metrics_address_;
  std::atomic<bool> stopping_{false};
  std::thread ticker_;
};

}  // namespace llamapro::coordinator

#endif  // LLAMAPRO_COORDINATOR_SERVER_H_
