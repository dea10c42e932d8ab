#include "coordinator/server.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status_macros.h"
#include "grpcpp/alarm.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "llamapro/v1/data.grpc.pb.h"
#include "llamapro/v1/jobs.grpc.pb.h"
#include "llamapro/v1/workers.grpc.pb.h"
#include "rpc/rpc.h"

namespace llamapro::coordinator {
namespace {

using Clock = std::chrono::steady_clock;

// Requests are small (specs, heartbeats, rendezvous values of at most 1 MiB).
constexpr int kMaxRequestBytes = 8 << 20;
// Samples per streamed message, and the most one call may ask for.
constexpr int64_t kSamplesPerMessage = 64;
// A message holds at most this many tokens (a sample's ids and loss mask
// are ~8 bytes per token), far below the channel's 128 MiB message limit.
constexpr int64_t kTokensPerMessage = 4 << 20;

// Samples per streamed message for sequences of `seq_len` tokens.
int64_t SamplesPerMessage(int64_t seq_len) {
  return std::clamp<int64_t>(kTokensPerMessage / std::max<int64_t>(seq_len, 1), 1,
                             kSamplesPerMessage);
}
constexpr int64_t kMaxSamplesPerCall = 4096;
constexpr int64_t kMaxSeqLen = 1 << 20;

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    default:
      return "UNKNOWN";
  }
}

template <typename T>
grpc::Status Assign(absl::StatusOr<T> result, T* out) {
  if (!result.ok()) return rpc::ToGrpc(result.status());
  *out = std::move(*result);
  return grpc::Status::OK;
}

void ToRecord(const Sample& sample, v1::SampleRecord* record) {
  record->set_index(sample.index);
  record->set_component(sample.component);
  std::string* tokens = record->mutable_tokens();
  tokens->resize(sample.tokens.size() * 4);
  for (size_t i = 0; i < sample.tokens.size(); ++i) {
    const auto v = static_cast<uint32_t>(sample.tokens[i]);
    for (int b = 0; b < 4; ++b) (*tokens)[i * 4 + b] = static_cast<char>(v >> (8 * b));
  }
  record->mutable_loss_mask()->assign(sample.loss_mask.begin(), sample.loss_mask.end());
}

}  // namespace

// The four services share the auth check and the request metrics.
class Server::Services {
 public:
  Services(Coordinator* coordinator, DataSource* data, Metrics* metrics, std::string token)
      : jobs(this),
        workers(this),
        rendezvous(this),
        data_service(this),
        coordinator_(coordinator),
        data_(data),
        metrics_(metrics),
        token_(std::move(token)) {}

  template <typename F>
  grpc::Status Call(grpc::ServerContextBase* context, const char* method, F&& body) {
    const auto start = Clock::now();
    grpc::Status status = rpc::CheckBearerToken(*context, token_);
    if (status.ok()) status = body();
    metrics_->ObserveRequest(method, CodeName(status.error_code()),
                             std::chrono::duration<double>(Clock::now() - start).count());
    return status;
  }

  // One WatchJob stream: sends the events after the requested one, one write
  // at a time, then polls for new ones every kWatchPoll until the job is
  // terminal; its last event goes out with the status. Deletes itself when
  // gRPC is done with it. Exactly one of a write or the alarm is pending
  // until Finish, which runs once.
  class WatchReactor final : public grpc::ServerWriteReactor<v1::JobEvent> {
   public:
    WatchReactor(Services* s, grpc::CallbackServerContext* context,
                 const v1::WatchJobRequest& request)
        : s_(s), id_(request.id()), after_(request.after_sequence()), start_(Clock::now()) {
      const grpc::Status auth = rpc::CheckBearerToken(*context, s_->token_);
      if (!auth.ok()) {
        End(auth);
        return;
      }
      Poll();
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        End(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
        return;
      }
      WriteNext();
    }
    void OnCancel() override {
      std::lock_guard<std::mutex> lock(mutex_);
      cancelled_ = true;
      alarm_.Cancel();  // Its callback ends the call.
    }
    void OnDone() override { delete this; }

   private:
    static constexpr std::chrono::milliseconds kWatchPoll{100};

    void Poll() {
      bool terminal = false;
      const absl::Status status = s_->coordinator_->EventsAfter(id_, after_, &events_, &terminal);
      if (!status.ok()) {
        End(rpc::ToGrpc(status));
        return;
      }
      next_ = 0;
      terminal_ = terminal;
      WriteNext();
    }
    void WriteNext() {
      if (next_ < events_.size()) {
        const v1::JobEvent& event = events_[next_++];
        after_ = event.sequence();
        if (next_ == events_.size() && terminal_) {
          ended_ = true;
          StartWriteAndFinish(&event, grpc::WriteOptions(), Observe(grpc::Status::OK));
        } else {  // No buffer_hint: gRPC 1.51 then holds writes for up to seconds.
          StartWrite(&event);
        }
        return;
      }
      if (terminal_) {
        End(grpc::Status::OK);
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!cancelled_) {
          alarm_.Set(std::chrono::system_clock::now() + kWatchPoll, [this](bool fired) {
            if (fired) {
              Poll();
            } else {
              End(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
            }
          });
          return;
        }
      }
      End(grpc::Status(grpc::StatusCode::CANCELLED, "the watcher went away"));
    }
    void End(const grpc::Status& status) {
      if (ended_) return;
      ended_ = true;
      Finish(Observe(status));
    }
    grpc::Status Observe(const grpc::Status& status) {
      s_->metrics_->ObserveRequest("WatchJob", CodeName(status.error_code()),
                                   std::chrono::duration<double>(Clock::now() - start_).count());
      return status;
    }

    Services* s_;
    std::string id_;
    int64_t after_;
    Clock::time_point start_;
    std::vector<v1::JobEvent> events_;
    size_t next_ = 0;
    bool terminal_ = false;
    bool ended_ = false;
    std::mutex mutex_;  // cancelled_ and alarm_ (OnCancel runs on any thread).
    bool cancelled_ = false;
    grpc::Alarm alarm_;
  };

  // GetJob and WatchJob, the calls clients poll, use the callback API: they
  // run on gRPC's own threads with no hand-off to a polling thread (the
  // sync API's thread churn doubled their cost: bench/control_plane_bench).
  class Jobs final : public v1::JobService::WithCallbackMethod_GetJob<
                         v1::JobService::WithCallbackMethod_WatchJob<v1::JobService::Service>> {
   public:
    explicit Jobs(Services* s) : s_(s) {}
    grpc::Status SubmitJob(grpc::ServerContext* context, const v1::SubmitJobRequest* request,
                           v1::Job* response) override {
      return s_->Call(context, "SubmitJob",
                      [&] { return Assign(s_->coordinator_->Submit(*request), response); });
    }
    grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context,
                                     const v1::GetJobRequest* request, v1::Job* response) override {
      grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
      reactor->Finish(s_->Call(context, "GetJob", [&] {
        return Assign(s_->coordinator_->GetJob(request->id()), response);
      }));
      return reactor;
    }
    grpc::Status ListJobs(grpc::ServerContext* context, const v1::ListJobsRequest* request,
                          v1::ListJobsResponse* response) override {
      return s_->Call(context, "ListJobs",
                      [&] { return Assign(s_->coordinator_->ListJobs(*request), response); });
    }
    grpc::Status CancelJob(grpc::ServerContext* context, const v1::CancelJobRequest* request,
                           v1::Job* response) override {
      return s_->Call(context, "CancelJob",
                      [&] { return Assign(s_->coordinator_->Cancel(request->id()), response); });
    }
    grpc::ServerWriteReactor<v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                     const v1::WatchJobRequest* request) override {
      return new WatchReactor(s_, context, *request);
    }

   private:
    Services* s_;
  };

  class Workers final : public v1::WorkerService::Service {
   public:
    explicit Workers(Services* s) : s_(s) {}
    grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                          v1::RegisterResponse* response) override {
      return s_->Call(context, "Register",
                      [&] { return Assign(s_->coordinator_->Register(*request), response); });
    }
    grpc::Status Heartbeat(grpc::ServerContext* context, const v1::HeartbeatRequest* request,
                           v1::HeartbeatResponse* response) override {
      return s_->Call(context, "Heartbeat",
                      [&] { return Assign(s_->coordinator_->Heartbeat(*request), response); });
    }
    grpc::Status ListWorkers(grpc::ServerContext* context, const v1::ListWorkersRequest*,
                             v1::ListWorkersResponse* response) override {
      return s_->Call(context, "ListWorkers", [&] {
        *response = s_->coordinator_->ListWorkers();
        return grpc::Status::OK;
      });
    }

   private:
    Services* s_;
  };

  class Rendezvous final : public v1::RendezvousService::Service {
   public:
    explicit Rendezvous(Services* s) : s_(s) {}
    grpc::Status Set(grpc::ServerContext* context, const v1::RendezvousSetRequest* request,
                     v1::RendezvousSetResponse*) override {
      return s_->Call(context, "RendezvousSet", [&] {
        return rpc::ToGrpc(s_->coordinator_->RendezvousSet(request->key(), request->value()));
      });
    }
    grpc::Status Wait(grpc::ServerContext* context, const v1::RendezvousWaitRequest* request,
                      v1::RendezvousWaitResponse* response) override {
      return s_->Call(context, "RendezvousWait", [&] {
        std::vector<std::string> keys(request->keys().begin(), request->keys().end());
        absl::StatusOr<std::vector<std::string>> values =
            s_->coordinator_->RendezvousWait(keys, std::chrono::milliseconds(request->timeout_ms()),
                                             [context] { return context->IsCancelled(); });
        if (!values.ok()) return rpc::ToGrpc(values.status());
        for (std::string& v : *values) response->add_values(std::move(v));
        return grpc::Status::OK;
      });
    }

   private:
    Services* s_;
  };

  class Data final : public v1::DataService::Service {
   public:
    explicit Data(Services* s) : s_(s) {}
    grpc::Status ReadSamples(grpc::ServerContext* context, const v1::ReadSamplesRequest* request,
                             grpc::ServerWriter<v1::SampleBatch>* writer) override {
      return s_->Call(context, "ReadSamples", [&]() -> grpc::Status {
        if (request->mixture().empty()) return Invalid("mixture", "name at least one corpus");
        SamplerOptions options;
        for (int i = 0; i < request->mixture_size(); ++i) {
          const v1::MixtureEntry& m = request->mixture(i);
          if (m.corpus().empty() || !(m.weight() > 0)) {
            return Invalid(absl::StrCat("mixture[", i, "]"),
                           "needs a corpus and a positive weight");
          }
          options.mixture.push_back({m.corpus(), m.weight()});
        }
        if (request->seq_len() < 1 || request->seq_len() > kMaxSeqLen) {
          return Invalid("seq_len", absl::StrCat("must be in [1, ", kMaxSeqLen, "]"));
        }
        options.seq_len = request->seq_len();
        options.seed = request->seed();
        const int64_t stride = request->stride() == 0 ? 1 : request->stride();
        if (request->start() < 0) return Invalid("start", "must be >= 0");
        if (stride < 1) return Invalid("stride", "must be >= 1 (0: 1)");
        if (request->count() < 0 || request->count() > kMaxSamplesPerCall) {
          return Invalid("count", absl::StrCat("must be in [0, ", kMaxSamplesPerCall, "]"));
        }
        std::vector<Sample> samples;
        const int64_t per_message = SamplesPerMessage(request->seq_len());
        for (int64_t done = 0; done < request->count(); done += per_message) {
          const int64_t n = std::min(per_message, request->count() - done);
          absl::Status read = s_->data_->ReadSamples(options, request->start() + done * stride,
                                                     stride, n, &samples);
          if (!read.ok()) return rpc::ToGrpc(read);
          v1::SampleBatch batch;
          for (const Sample& sample : samples) ToRecord(sample, batch.add_samples());
          if (!writer->Write(batch))
            return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
        }
        return grpc::Status::OK;
      });
    }
    grpc::Status ReadHeldOut(grpc::ServerContext* context, const v1::ReadHeldOutRequest* request,
                             grpc::ServerWriter<v1::SampleBatch>* writer) override {
      return s_->Call(context, "ReadHeldOut", [&]() -> grpc::Status {
        if (request->corpus().empty()) return Invalid("corpus", "required");
        if (request->seq_len() < 1 || request->seq_len() > kMaxSeqLen) {
          return Invalid("seq_len", absl::StrCat("must be in [1, ", kMaxSeqLen, "]"));
        }
        if (request->start() < 0) return Invalid("start", "must be >= 0");
        if (request->count() < 0 || request->count() > kMaxSamplesPerCall) {
          return Invalid("count", absl::StrCat("must be in [0, ", kMaxSamplesPerCall, "]"));
        }
        std::vector<Sample> samples;
        const int64_t per_message = SamplesPerMessage(request->seq_len());
        for (int64_t done = 0; done < request->count(); done += per_message) {
          const int64_t n = std::min(per_message, request->count() - done);
          absl::Status read = s_->data_->ReadHeldOut(request->corpus(), request->seq_len(),
                                                     request->start() + done, n, &samples);
          if (!read.ok()) return rpc::ToGrpc(read);
          v1::SampleBatch batch;
          for (const Sample& sample : samples) ToRecord(sample, batch.add_samples());
          if (!writer->Write(batch))
            return grpc::Status(grpc::StatusCode::CANCELLED, "client gone");
        }
        return grpc::Status::OK;
      });
    }
    grpc::Status HeldOutInfo(grpc::ServerContext* context, const v1::HeldOutInfoRequest* request,
                             v1::HeldOutInfoResponse* response) override {
      return s_->Call(context, "HeldOutInfo", [&]() -> grpc::Status {
        if (request->corpus().empty()) return Invalid("corpus", "required");
        if (request->seq_len() < 1 || request->seq_len() > kMaxSeqLen) {
          return Invalid("seq_len", absl::StrCat("must be in [1, ", kMaxSeqLen, "]"));
        }
        absl::StatusOr<int64_t> windows =
            s_->data_->HeldOutWindows(request->corpus(), request->seq_len());
        if (!windows.ok()) return rpc::ToGrpc(windows.status());
        response->set_windows(*windows);
        return grpc::Status::OK;
      });
    }
    grpc::Status StoreInfo(grpc::ServerContext* context, const v1::StoreInfoRequest*,
                           v1::StoreInfoResponse* response) override {
      return s_->Call(context, "StoreInfo", [&]() -> grpc::Status {
        absl::StatusOr<StoreTokenizer> tokenizer = s_->data_->Tokenizer();
        if (!tokenizer.ok()) return rpc::ToGrpc(tokenizer.status());
        response->set_tokenizer_fingerprint(tokenizer->fingerprint);
        response->set_tokenizer_path(tokenizer->path);
        response->set_vocab_size(tokenizer->vocab_size);
        response->set_bos_id(tokenizer->bos_id);
        response->set_eos_id(tokenizer->eos_id);
        response->set_pad_id(tokenizer->pad_id);
        absl::StatusOr<std::vector<CorpusInfo>> corpora = s_->store_corpora();
        if (!corpora.ok()) return rpc::ToGrpc(corpora.status());
        for (const CorpusInfo& c : *corpora) response->add_corpora(c.name);
        return grpc::Status::OK;
      });
    }

   private:
    static grpc::Status Invalid(absl::string_view field, absl::string_view what) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, absl::StrCat(field, ": ", what));
    }
    Services* s_;
  };

  absl::StatusOr<std::vector<CorpusInfo>> store_corpora() const { return store_->ListCorpora(); }

  Jobs jobs;
  Workers workers;
  Rendezvous rendezvous;
  Data data_service;
  const TokenStore* store_ = nullptr;

 private:
  Coordinator* coordinator_;
  DataSource* data_;
  Metrics* metrics_;
  std::string token_;
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  LP_RETURN_IF_ERROR(MakeDirs(options.data_dir));
  std::unique_ptr<Server> server(new Server());
  LP_ASSIGN_OR_RETURN(PathPolicy paths,
                      PathPolicy::Create(options.data_dir, options.allowed_roots));
  const std::string store_dir = JoinPath(paths.data_dir(), "store");
  auto store = TokenStore::Open(store_dir, TokenStore::Mode::kReadWrite, JobStoreFamilies());
  if (!store.ok()) {
    return absl::Status(
        store.status().code(),
        absl::StrCat(store.status().message(), " (is another coordinator using --data-dir ",
                     options.data_dir, "?)"));
  }
  server->store_ = std::move(*store);
  LP_ASSIGN_OR_RETURN(
      server->coordinator_,
      Coordinator::Create(server->store_.get(), std::move(paths),
                          CoordinatorOptions{.heartbeat_timeout = options.heartbeat_timeout,
                                             .adoption_grace = options.adoption_grace,
                                             .ingest_threads = options.ingest_threads}));
  server->data_ = std::make_unique<StoreDataSource>(server->store_.get());
  server->metrics_ = std::make_unique<Metrics>(server->coordinator_.get());
  server->services_ = std::make_unique<Services>(server->coordinator_.get(), server->data_.get(),
                                                 server->metrics_.get(), options.auth_token);
  server->services_->store_ = server->store_.get();

  LP_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                      rpc::MakeServerCredentials(options.tls_cert, options.tls_key));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, credentials, &port);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  // Keep pollers warm: with gRPC's default (at most 2 idle), a burst of
  // concurrent calls starts and ends a thread for nearly every request
  // (measured by bench/control_plane_bench: 0.2 thread creations per call).
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 8);
  builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 256);
  builder.SetMaxSendMessageSize(rpc::kMaxMessageBytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.RegisterService(&server->services_->jobs);
  builder.RegisterService(&server->services_->workers);
  builder.RegisterService(&server->services_->rendezvous);
  builder.RegisterService(&server->services_->data_service);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen ", options.listen,
                                               ": cannot listen there (in use, or not a local "
                                               "address?)"));
  }
  const size_t colon = options.listen.rfind(':');
  std::string host = colon == std::string::npos ? "127.0.0.1" : options.listen.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "[::]") host = "127.0.0.1";
  server->address_ = absl::StrCat(host, ":", port);
  if (!options.metrics_listen.empty()) {
    absl::StatusOr<std::string> metrics = server->metrics_->Serve(options.metrics_listen);
    if (!metrics.ok()) {
      server->Shutdown(std::chrono::milliseconds(0));
      return absl::Status(metrics.status().code(),
                          absl::StrCat("--metrics-listen: ", metrics.status().message()));
    }
    server->metrics_address_ = *metrics;
  }
  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  if (health != nullptr) health->SetServingStatus(true);

  Server* raw = server.get();
  const auto tick = std::min(std::chrono::milliseconds(250), options.heartbeat_timeout / 4);
  server->ticker_ = std::thread([raw, tick] {
    while (!raw->stopping_.load()) {
      std::this_thread::sleep_for(tick);
      if (!raw->stopping_.load()) raw->coordinator_->Tick();
    }
  });
  return server;
}

void Server::Shutdown(std::chrono::milliseconds grace) {
  if (stopping_.exchange(true)) return;
  if (server_ != nullptr) {
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    if (health != nullptr) health->SetServingStatus(false);
    server_->Shutdown(std::chrono::system_clock::now() + grace);
  }
  if (ticker_.joinable()) ticker_.join();
}

Server::~Server() {
  Shutdown();
  server_.reset();
  services_.reset();
  metrics_.reset();
  data_.reset();
  coordinator_.reset();
  if (store_ != nullptr) store_->Sync().IgnoreError();
  store_.reset();
}

}  // namespace llamapro::coordinator
