#include "coordinator/metrics.h"

#include <algorithm>
#include <exception>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace llamapro::coordinator {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

void Add(MetricFamily* family, std::vector<ClientMetric::Label> labels, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (family->type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  family->metric.push_back(std::move(metric));
}

std::string Lower(absl::string_view enum_name, absl::string_view prefix) {
  return absl::AsciiStrToLower(absl::StripPrefix(enum_name, prefix));
}

}  // namespace

// Builds the job and worker families from a Coordinator snapshot per scrape,
// so they can never disagree with GetJob / ListWorkers.
class Metrics::StateCollector : public prometheus::Collectable {
 public:
  explicit StateCollector(const Coordinator* coordinator) : coordinator_(coordinator) {}

  std::vector<MetricFamily> Collect() const override {
    const MetricsSnapshot s = coordinator_->Snapshot();
    MetricFamily jobs = Family("llamapro_jobs", "Jobs by state.", MetricType::Gauge);
    for (const auto& [state, n] : s.jobs_by_state) {
      Add(&jobs, {{"state", Lower(v1::JobState_Name(state), "JOB_STATE_")}},
          static_cast<double>(n));
    }
    MetricFamily workers = Family("llamapro_workers", "Workers by state.", MetricType::Gauge);
    for (const auto& [state, n] : s.workers_by_state) {
      Add(&workers, {{"state", Lower(v1::WorkerState_Name(state), "WORKER_STATE_")}},
          static_cast<double>(n));
    }
    MetricFamily restarts =
        Family("llamapro_job_restarts_total",
               "Attempts restarted after a lost worker or a transient rank failure, over all jobs.",
               MetricType::Counter);
    Add(&restarts, {}, static_cast<double>(s.restarts_total));

    MetricFamily step = Family("llamapro_job_step",
                               "Steps completed by a running job (optimizer steps; tensors, "
                               "corpora or files for expand, eval, ingest).",
                               MetricType::Gauge);
    MetricFamily total_steps = Family("llamapro_job_total_steps",
                                      "Optimizer steps a running job will run.", MetricType::Gauge);
    MetricFamily loss = Family("llamapro_job_loss", "Training loss of the last step (nats/token).",
                               MetricType::Gauge);
    MetricFamily lr =
        Family("llamapro_job_learning_rate", "Learning rate of the last step.", MetricType::Gauge);
    MetricFamily grad_norm =
        Family("llamapro_job_grad_norm", "Global gradient norm of the last step, before clipping.",
               MetricType::Gauge);
    MetricFamily rate = Family("llamapro_job_tokens_per_second",
                               "Training throughput of the last step.", MetricType::Gauge);
    MetricFamily tokens = Family("llamapro_job_tokens_total",
                                 "Tokens a running job has trained on (resets to the checkpoint's "
                                 "count when an attempt restarts).",
                                 MetricType::Counter);
    MetricFamily ppl = Family("llamapro_job_perplexity",
                              "Latest held-out perplexity of a running job by corpus (the "
                              "forgetting monitor); role is general or domain.",
                              MetricType::Gauge);
    MetricFamily initial_ppl =
        Family("llamapro_job_initial_perplexity",
               "Held-out perplexity by corpus at the job's first evaluation (the model as "
               "expanded, before training): the forgetting alarm's reference.",
               MetricType::Gauge);
    MetricFamily flops =
        Family("llamapro_job_model_flops_per_second",
               "FLOPs the training step executes per second, whole job.", MetricType::Gauge);
    MetricFamily mfu = Family("llamapro_job_mfu",
                              "Model FLOPs utilization: model FLOP/s over the summed peak FLOP/s "
                              "of the job's workers (0 to 1).",
                              MetricType::Gauge);
    MetricFamily peak = Family("llamapro_worker_peak_flops",
                               "Peak FLOP/s of a registered worker's device (--peak-flops or "
                               "measured at start).",
                               MetricType::Gauge);
    MetricFamily evals =
        Family("llamapro_eval_result",
               "Results of the newest 100 succeeded eval jobs: metric is a corpus "
               "(task ppl: its perplexity), or acc, acc_norm, pass@1, unshifted...",
               MetricType::Gauge);
    for (const EvalResultView& e : s.evals) {
      for (const auto& [metric, value] : e.result) {
        Add(&evals, {{"job_id", e.id}, {"name", e.name}, {"task", e.task}, {"metric", metric}},
            value);
      }
    }
    for (const auto& [name, value] : s.worker_peak_flops) {
      if (value > 0) Add(&peak, {{"worker", name}}, value);
    }
    MetricFamily job_restarts = Family("llamapro_job_attempt_restarts",
                                       "Restarts of a running job so far.", MetricType::Gauge);
    for (const JobMetricsView& job : s.running) {
      std::vector<ClientMetric::Label> labels = {
          {"job_id", job.id}, {"name", job.name}, {"kind", job.kind}};
      const v1::Progress& p = job.progress;
      Add(&step, labels, static_cast<double>(p.step()));
      Add(&total_steps, labels, static_cast<double>(p.total_steps()));
      Add(&loss, labels, p.loss());
      Add(&lr, labels, p.learning_rate());
      Add(&grad_norm, labels, p.grad_norm());
      Add(&rate, labels, p.tokens_per_second());
      Add(&tokens, labels, static_cast<double>(p.tokens()));
      Add(&job_restarts, labels, job.restarts);
      if (p.model_flops_per_second() > 0) {
        Add(&flops, labels, p.model_flops_per_second());
        if (p.mfu() > 0) Add(&mfu, labels, p.mfu());
      }
      const auto corpus_labels = [&](const std::string& corpus) {
        std::vector<ClientMetric::Label> with_corpus = labels;
        with_corpus.push_back({"corpus", corpus});
        const bool general = std::find(p.general_corpora().begin(), p.general_corpora().end(),
                                       corpus) != p.general_corpora().end();
        with_corpus.push_back({"role", general ? "general" : "domain"});
        return with_corpus;
      };
      for (const auto& [corpus, value] : p.perplexity()) Add(&ppl, corpus_labels(corpus), value);
      for (const auto& [corpus, value] : p.initial_perplexity()) {
        Add(&initial_ppl, corpus_labels(corpus), value);
      }
    }
    return {jobs,   workers, restarts,    step,  total_steps, loss,         lr,   grad_norm, rate,
            tokens, ppl,     initial_ppl, flops, mfu,         job_restarts, peak, evals};
  }

 private:
  const Coordinator* coordinator_;
};

Metrics::Metrics(const Coordinator* coordinator)
    : registry_(std::make_shared<prometheus::Registry>()),
      state_(std::make_shared<StateCollector>(coordinator)) {
  requests_ = &prometheus::BuildCounter()
                   .Name("llamapro_grpc_requests_total")
                   .Help("gRPC requests handled, by method and status code.")
                   .Register(*registry_);
  latency_ = &prometheus::BuildHistogram()
                  .Name("llamapro_grpc_request_duration_seconds")
                  .Help("Time to handle a gRPC request (streams: until the stream ends).")
                  .Register(*registry_);
}

Metrics::~Metrics() = default;

absl::StatusOr<std::string> Metrics::Serve(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on ", address, ": ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  exposer_->RegisterCollectable(state_);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty())
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address));
  const size_t colon = address.rfind(':');
  std::string host = colon == std::string::npos ? "127.0.0.1" : address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0") host = "127.0.0.1";
  return absl::StrCat(host, ":", ports.front());
}

void Metrics::ObserveRequest(absl::string_view method, absl::string_view code, double seconds) {
  requests_->Add({{"method", std::string(method)}, {"code", std::string(code)}}).Increment();
  static const prometheus::Histogram::BucketBoundaries kBuckets = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  latency_->Add({{"method", std::string(method)}}, kBuckets).Observe(seconds);
}

std::string Metrics::Render() const {
  std::vector<MetricFamily> families = registry_->Collect();
  std::vector<MetricFamily> state = state_->Collect();
  families.insert(families.end(), state.begin(), state.end());
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace llamapro::coordinator
