// The worker's Prometheus metrics (prometheus-cpp), served on /metrics when
// the worker is given --metrics-listen. docs/worker.md lists them:
//   llamapro_worker_info{name,device}          1
//   llamapro_worker_busy                       1 while a task runs
//   llamapro_worker_step_seconds               duration of the last training step
//   llamapro_worker_tokens_total               training tokens this worker processed
//   llamapro_worker_tasks_total{outcome}       tasks ended: succeeded|failed|cancelled
//   llamapro_worker_resident_memory_bytes      resident set size of the process
//
// Thread-safety: every method is thread-safe (prometheus-cpp metrics are
// atomic); Serve is called once, before the metrics are scraped.
#ifndef LLAMAPRO_WORKER_METRICS_H_
#define LLAMAPRO_WORKER_METRICS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Registry;
}  // namespace prometheus

namespace llamapro::worker {

class WorkerMetrics {
 public:
  WorkerMetrics(const std::string& name, const std::string& device);
  ~WorkerMetrics();
  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  void SetBusy(bool busy);
  void SetStepSeconds(double seconds);
  void AddTokens(int64_t tokens);
  // `outcome`: "succeeded", "failed" or "cancelled" (anything else is
  // counted as "failed").
  void CountTask(absl::string_view outcome);
  // Reads the process's resident set size (/proc/self/statm) into the gauge
  // and returns it (0 where it cannot be read).
  double UpdateResidentMemory();

  // Serves /metrics over HTTP on `listen` ("host:port"; port 0 picks a free
  // one). Returns the address others reach it at: the bound host and port,
  // with a wildcard host (0.0.0.0, [::]) replaced by this machine's host
  // name. An address that cannot be bound is an error naming it.
  absl::StatusOr<std::string> Serve(const std::string& listen);

  // The text exposition format of every metric (what /metrics returns).
  std::string Render() const;

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge* busy_ = nullptr;
  prometheus::Gauge* step_seconds_ = nullptr;
  prometheus::Counter* tokens_ = nullptr;
  prometheus::Counter* succeeded_ = nullptr;
  prometheus::Counter* failed_ = nullptr;
  prometheus::Counter* cancelled_ = nullptr;
  prometheus::Gauge* resident_memory_ = nullptr;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

// Resident set size of this process in bytes, from /proc/self/statm (0 where
// it cannot be read).
uint64_t ResidentMemoryBytes();

// This machine's host name ("localhost" where it cannot be read).
std::string HostName();

}  // namespace llamapro::worker

#endif  // LLAMAPRO_WORKER_METRICS_H_
