#include "worker/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/gauge.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace llamapro::worker {

WorkerMetrics::WorkerMetrics(const std::string& name, const std::string& device)
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::BuildGauge()
      .Name("llamapro_worker_info")
      .Help("Always 1; labels name the worker and its device")
      .Register(*registry_)
      .Add({{"name", name}, {"device", device}})
      .Set(1);
  busy_ = &prometheus::BuildGauge()
               .Name("llamapro_worker_busy")
               .Help("1 while the worker runs a task, 0 when idle")
               .Register(*registry_)
               .Add({});
  step_seconds_ = &prometheus::BuildGauge()
                       .Name("llamapro_worker_step_seconds")
                       .Help("Wall-clock duration of the last training step")
                       .Register(*registry_)
                       .Add({});
  tokens_ = &prometheus::BuildCounter()
                 .Name("llamapro_worker_tokens_total")
                 .Help("Training tokens this worker processed (its share of each global batch)")
                 .Register(*registry_)
                 .Add({});
  auto& tasks = prometheus::BuildCounter()
                    .Name("llamapro_worker_tasks_total")
                    .Help("Tasks this worker finished, by outcome")
                    .Register(*registry_);
  succeeded_ = &tasks.Add({{"outcome", "succeeded"}});
  failed_ = &tasks.Add({{"outcome", "failed"}});
  cancelled_ = &tasks.Add({{"outcome", "cancelled"}});
  resident_memory_ = &prometheus::BuildGauge()
                          .Name("llamapro_worker_resident_memory_bytes")
                          .Help("Resident set size of the worker process")
                          .Register(*registry_)
                          .Add({});
  UpdateResidentMemory();
}

WorkerMetrics::~WorkerMetrics() = default;

void WorkerMetrics::SetBusy(bool busy) { busy_->Set(busy ? 1 : 0); }
void WorkerMetrics::SetStepSeconds(double seconds) { step_seconds_->Set(seconds); }
void WorkerMetrics::AddTokens(int64_t tokens) {
  if (tokens > 0) tokens_->Increment(static_cast<double>(tokens));
}

void WorkerMetrics::CountTask(absl::string_view outcome) {
  if (outcome == "succeeded") {
    succeeded_->Increment();
  } else if (outcome == "cancelled") {
    cancelled_->Increment();
  } else {
    failed_->Increment();
  }
}

double WorkerMetrics::UpdateResidentMemory() {
  const double bytes = static_cast<double>(ResidentMemoryBytes());
  resident_memory_->Set(bytes);
  return bytes;
}

absl::StatusOr<std::string> WorkerMetrics::Serve(const std::string& listen) {
  if (exposer_ != nullptr) return absl::FailedPreconditionError("metrics are already served");
  const size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen \"", listen, "\": expected host:port (port 0 picks one)"));
  }
  std::string host = listen.substr(0, colon);
  try {
    // civetweb takes "host:port" as its listening_ports and throws when it
    // cannot bind.
    exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve /metrics on \"", listen, "\": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty()) {
    exposer_.reset();
    return absl::UnavailableError(
        absl::StrCat("cannot serve /metrics on \"", listen, "\": no port is listening"));
  }
  if (host.empty() || host == "0.0.0.0" || host == "[::]" || host == "::") host = HostName();
  return absl::StrCat(host, ":", ports.front());
}

std::string WorkerMetrics::Render() const {
  return prometheus::TextSerializer().Serialize(registry_->Collect());
}

uint64_t ResidentMemoryBytes() {
  std::FILE* file = std::fopen("/proc/self/statm", "r");
  if (file == nullptr) return 0;
  unsigned long long size = 0, resident = 0;
  const int read = std::fscanf(file, "%llu %llu", &size, &resident);
  std::fclose(file);
  if (read != 2) return 0;
  const long page = sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<uint64_t>(resident) * static_cast<uint64_t>(page) : 0;
}

std::string HostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace llamapro::worker
