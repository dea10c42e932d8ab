// The coordinator's Prometheus metrics (docs/metrics.md lists them): job and
// worker state read from the Coordinator at scrape time, and counters and
// latency histograms of the gRPC methods, served on --metrics-listen.
#ifndef LLAMAPRO_COORDINATOR_METRICS_H_
#define LLAMAPRO_COORDINATOR_METRICS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coordinator/coordinator.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace llamapro::coordinator {

// Thread-safe.
class Metrics {
 public:
  // `coordinator` must outlive this. Metrics are exported once Serve runs.
  explicit Metrics(const Coordinator* coordinator);
  ~Metrics();

  // Serves /metrics on `address` (host:port; port 0 picks one). Returns the
  // bound host:port. An address in use is an error naming it.
  absl::StatusOr<std::string> Serve(const std::string& address);

  // One finished RPC: `method` is the short name ("GetJob"), `code` the gRPC
  // status code's canonical name ("OK", "NOT_FOUND").
  void ObserveRequest(absl::string_view method, absl::string_view code, double seconds);

  // The exposition text, as served (for tests and `llamaproctl`).
  std::string Render() const;

 private:
  class StateCollector;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<StateCollector> state_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* latency_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace llamapro::coordinator

#endif  // LLAMAPRO_COORDINATOR_METRICS_H_
