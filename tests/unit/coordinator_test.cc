// The coordinator through its real gRPC services (in process, loopback,
// ephemeral ports): job lifecycle, idempotent submit, paging, path
// confinement, authentication, gang scheduling, the heartbeat protocol,
// lost workers, cancellation, dependencies, the rendezvous and restarts of
// the coordinator itself. The workers here are test clients speaking the
// protocol; tests/integration runs real llamapro-worker processes.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "coordinator/server.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "llamapro/v1/jobs.grpc.pb.h"
#include "llamapro/v1/workers.grpc.pb.h"
#include "rpc/rpc.h"
#include "tests/testing/data_util.h"
#include "tests/testing/test_util.h"

namespace llamapro::coordinator {
namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr auto kTimeout = std::chrono::milliseconds(600);

std::string TrainYaml(const std::string& output_dir) {
  return absl::StrCat(R"(model: models/base
output_dir: )",
                      output_dir, R"(
data: {mixture: {code: 1}, seq_len: 16, seed: 0}
trainable: all
optimizer: {name: adamw, lr: 1.0e-3}
schedule: {warmup: 0, decay: constant}
batch: {sequences: 4, micro_batch: 1}
steps: 4
)");
}

v1::JobSpec ExpandSpec(const std::string& out) {
  v1::JobSpec spec;
  spec.set_kind(v1::JOB_KIND_EXPAND);
  spec.mutable_expand()->set_model("models/base");
  spec.mutable_expand()->set_out(out);
  spec.mutable_expand()->set_add_blocks(2);
  return spec;
}

v1::JobSpec PretrainSpec(const std::string& out, int world_size) {
  v1::JobSpec spec;
  spec.set_kind(v1::JOB_KIND_PRETRAIN);
  spec.set_world_size(world_size);
  spec.set_train_config_yaml(TrainYaml(out));
  return spec;
}

// A worker speaking the protocol by hand.
// The fixture's token, sent by every call except the ones that test auth.
std::string& TestToken() {
  static std::string token;
  return token;
}

void Authorize(grpc::ClientContext* context) {
  if (!TestToken().empty()) context->AddMetadata("authorization", "Bearer " + TestToken());
}

class FakeWorker {
 public:
  FakeWorker(v1::WorkerService::Stub* stub, std::string name)
      : stub_(stub), name_(std::move(name)) {}

  void Register(const std::string& running_job = "", int attempt = 0, int rank = 0) {
    v1::RegisterRequest request;
    request.set_name(name_);
    request.set_device(device);
    request.set_host(host);
    request.set_pid(1);
    request.set_running_job_id(running_job);
    request.set_running_attempt(attempt);
    request.set_running_rank(rank);
    request.set_peak_flops(peak_flops);
    v1::RegisterResponse response;
    grpc::ClientContext context;
    Authorize(&context);
    ASSERT_TRUE(stub_->Register(&context, request, &response).ok());
    id_ = response.worker_id();
    EXPECT_GT(response.heartbeat_interval_ms(), 0);
  }

  v1::HeartbeatResponse Beat(v1::TaskStatus status = v1::TASK_STATUS_IDLE,
                             const std::string& job = "", int attempt = 0, int code = 0,
                             const std::string& message = "") {
    v1::HeartbeatRequest request;
    request.set_worker_id(id_);
    request.set_status(status);
    request.set_job_id(job);
    request.set_attempt(attempt);
    request.set_error_code(code);
    request.set_message(message);
    if (status == v1::TASK_STATUS_RUNNING) {
      *request.mutable_progress() = progress;
      request.mutable_progress()->set_step(++step_);
      request.mutable_progress()->set_total_steps(100);
      request.mutable_progress()->set_loss(2.5);
    }
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    Authorize(&context);
    grpc::Status s = stub_->Heartbeat(&context, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

  const std::string& name() const { return name_; }
  const std::string& id() const { return id_; }

  double peak_flops = 0;       // Sent by Register.
  std::string host = "test";   // Sent by Register.
  std::string device = "cpu";  // Sent by Register.
  v1::Progress progress;       // Sent by RUNNING heartbeats (step, total, loss set on top).

 private:
  v1::WorkerService::Stub* stub_;
  std::string name_;
  std::string id_;
  int64_t step_ = 0;
};

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(dir_.Join("models/base"));
    Start();
  }

  void Start(const std::string& token = "") {
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.data_dir = dir_.path();
    options.metrics_listen = "";
    options.heartbeat_timeout = kTimeout;
    options.adoption_grace = kTimeout / 2;
    options.auth_token = token;
    TestToken() = token;
    auto server = Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    rpc::ConnectionOptions connection;
    connection.address = server_->address();
    connection.token = token;
    auto channel = rpc::MakeChannel(connection);
    ASSERT_TRUE(channel.ok());
    channel_ = *channel;
    jobs_ = v1::JobService::NewStub(channel_);
    workers_ = v1::WorkerService::NewStub(channel_);
  }

  void Restart() {
    server_.reset();
    Start();
  }

  v1::Job Submit(const v1::JobSpec& spec, const std::string& request_id = "") {
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    request.set_request_id(request_id);
    v1::Job job;
    grpc::ClientContext context;
    Authorize(&context);
    grpc::Status s = jobs_->SubmitJob(&context, request, &job);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return job;
  }

  grpc::Status TrySubmit(const v1::JobSpec& spec) {
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    v1::Job job;
    grpc::ClientContext context;
    Authorize(&context);
    return jobs_->SubmitJob(&context, request, &job);
  }

  v1::Job Get(const std::string& id) {
    v1::GetJobRequest request;
    request.set_id(id);
    v1::Job job;
    grpc::ClientContext context;
    Authorize(&context);
    EXPECT_TRUE(jobs_->GetJob(&context, request, &job).ok());
    return job;
  }

  // Polls until `predicate` holds for the job (the scheduler runs on its own
  // thread); fails after a few heartbeat timeouts.
  template <typename P>
  v1::Job WaitFor(const std::string& id, P predicate) {
    const auto deadline = Clock::now() + 10 * kTimeout;
    v1::Job job = Get(id);
    while (!predicate(job) && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      job = Get(id);
    }
    EXPECT_TRUE(predicate(job)) << job.DebugString();
    return job;
  }

  testing::ScratchDir dir_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> jobs_;
  std::unique_ptr<v1::WorkerService::Stub> workers_;
};

TEST_F(CoordinatorTest, SubmittedJobIsPendingWithResolvedPathsAndAnEvent) {
  v1::Job job = Submit(ExpandSpec("out"));
  EXPECT_EQ(job.id(), "job-1");
  EXPECT_EQ(job.state(), v1::JOB_STATE_PENDING);
  const std::string root = std::filesystem::canonical(dir_.path()).string();
  EXPECT_EQ(job.spec().expand().model(), root + "/models/base");
  EXPECT_EQ(job.spec().expand().out(), root + "/out");
  EXPECT_EQ(job.spec().expand().layout(), "interleaved");
  EXPECT_EQ(job.spec().max_restarts(), 3);
  EXPECT_THAT(Get("job-1").message(), HasSubstr("waiting for 1 idle worker"));
}

TEST_F(CoordinatorTest, SubmitWithTheSameRequestIdReturnsTheFirstJob) {
  v1::Job first = Submit(ExpandSpec("a"), "req-1");
  v1::Job again = Submit(ExpandSpec("a"), "req-1");
  EXPECT_EQ(first.id(), again.id());
  v1::SubmitJobRequest request;
  *request.mutable_spec() = ExpandSpec("b");
  request.set_request_id("req-1");
  v1::Job job;
  grpc::ClientContext context;
  Authorize(&context);
  grpc::Status s = jobs_->SubmitJob(&context, request, &job);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::ALREADY_EXISTS) << s.error_message();
  // And it survives a restart.
  Restart();
  EXPECT_EQ(Submit(ExpandSpec("a"), "req-1").id(), first.id());
}

TEST_F(CoordinatorTest, ListJobsPagesNewestFirstAndFilters) {
  for (int i = 0; i < 5; ++i) Submit(ExpandSpec(absl::StrCat("out", i)));
  v1::JobSpec pretrain = PretrainSpec("run", 1);
  Submit(pretrain);
  std::vector<std::string> seen;
  std::string token;
  do {
    v1::ListJobsRequest request;
    request.set_page_size(2);
    request.set_page_token(token);
    request.set_kind(v1::JOB_KIND_EXPAND);
    v1::ListJobsResponse response;
    grpc::ClientContext context;
    Authorize(&context);
    ASSERT_TRUE(jobs_->ListJobs(&context, request, &response).ok());
    EXPECT_LE(response.jobs_size(), 2);
    for (const v1::Job& job : response.jobs()) seen.push_back(job.id());
    token = response.next_page_token();
  } while (!token.empty());
  EXPECT_EQ(seen, (std::vector<std::string>{"job-5", "job-4", "job-3", "job-2", "job-1"}));

  v1::ListJobsRequest bad;
  bad.set_page_token("garbage");
  v1::ListJobsResponse response;
  grpc::ClientContext context;
  Authorize(&context);
  grpc::Status s = jobs_->ListJobs(&context, bad, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("page_token"));
}

TEST_F(CoordinatorTest, PathsEscapingTheDataDirAreInvalidArguments) {
  for (const std::string& out :
       {std::string("/etc/llamapro"), std::string("../outside"), std::string("a/../../outside")}) {
    grpc::Status s = TrySubmit(ExpandSpec(out));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << out;
    EXPECT_THAT(s.error_message(), HasSubstr("spec.expand.out")) << out;
    EXPECT_THAT(s.error_message(), HasSubstr("outside the data dir")) << out;
  }
  // A symlink inside the data dir that points out of it is followed.
  std::filesystem::create_directory_symlink("/tmp", dir_.Join("escape"));
  grpc::Status s = TrySubmit(ExpandSpec("escape/x"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Training configs too.
  s = TrySubmit(PretrainSpec("/var/tmp/run", 1));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("output_dir"));
}

TEST_F(CoordinatorTest, MalformedSpecsNameTheField) {
  v1::JobSpec spec;
  EXPECT_THAT(TrySubmit(spec).error_message(), HasSubstr("spec.kind"));
  spec = ExpandSpec("out");
  spec.mutable_expand()->set_layout("sideways");
  EXPECT_THAT(TrySubmit(spec).error_message(), HasSubstr("spec.expand.layout"));
  spec = ExpandSpec("out");
  spec.set_world_size(2);
  EXPECT_THAT(TrySubmit(spec).error_message(), HasSubstr("spec.world_size"));
  spec = ExpandSpec("out");
  spec.add_depends_on("job-99");
  EXPECT_THAT(TrySubmit(spec).error_message(), HasSubstr("spec.depends_on[0]"));
  spec = PretrainSpec("run", 3);  // 4 sequences do not split over 3 ranks.
  EXPECT_THAT(TrySubmit(spec).error_message(), HasSubstr("spec.world_size"));
  spec = PretrainSpec("run", 1);
  spec.set_train_config_yaml("model: m\noutput_dir: o\nlearning_rate: 3\n");
  grpc::Status s = TrySubmit(spec);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("spec.train_config_yaml"));
}

TEST_F(CoordinatorTest, TwoActiveJobsMayNotWriteTheSameDirectory) {
  Submit(ExpandSpec("out"));
  grpc::Status s = TrySubmit(ExpandSpec("out"));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(s.error_message(), HasSubstr("job-1"));
}

TEST_F(CoordinatorTest, WrongOrMissingTokenIsUnauthenticatedButHealthIsOpen) {
  server_.reset();
  Start("s3cret");
  EXPECT_EQ(Submit(ExpandSpec("out")).id(), "job-1");  // The fixture's channel sends it.
  rpc::ConnectionOptions anonymous;
  anonymous.address = server_->address();
  auto channel = *rpc::MakeChannel(anonymous);
  auto stub = v1::JobService::NewStub(channel);
  for (const std::string& token : {std::string(), std::string("wrong"), std::string("s3cret ")}) {
    grpc::ClientContext context;
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    v1::GetJobRequest request;
    request.set_id("job-1");
    v1::Job job;
    EXPECT_EQ(stub->GetJob(&context, request, &job).error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << "token '" << token << "'";
  }
  auto worker_stub = v1::WorkerService::NewStub(channel);
  grpc::ClientContext context;
  v1::RegisterRequest request;
  request.set_name("w");
  request.set_device("cpu");
  v1::RegisterResponse response;
  EXPECT_EQ(worker_stub->Register(&context, request, &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto health = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext health_context;
  grpc::health::v1::HealthCheckRequest check;
  grpc::health::v1::HealthCheckResponse status;
  ASSERT_TRUE(health->Check(&health_context, check, &status).ok());
  EXPECT_EQ(status.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(CoordinatorTest, TlsWhenACertificateIsGiven) {
  const std::string cert = dir_.Join("cert.pem"), key = dir_.Join("key.pem");
  const std::string openssl = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      key, " -out ", cert, " >/dev/null 2>&1");
  if (std::system(openssl.c_str()) != 0) GTEST_SKIP() << "openssl is not available";
  server_.reset();
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.data_dir = dir_.path();
  options.metrics_listen = "";
  options.tls_cert = cert;
  options.tls_key = key;
  auto server = Server::Start(options);
  ASSERT_TRUE(server.ok()) << server.status();
  rpc::ConnectionOptions secure;
  secure.address = (*server)->address();
  secure.tls_ca = cert;
  auto channel = rpc::MakeChannel(secure);
  ASSERT_TRUE(channel.ok()) << channel.status();
  v1::ListJobsResponse list;
  grpc::ClientContext context;
  rpc::PrepareContext(&context, secure, std::chrono::seconds(10));
  grpc::Status s = v1::JobService::NewStub(*channel)->ListJobs(&context, {}, &list);
  EXPECT_TRUE(s.ok()) << s.error_message();
  // Plaintext cannot talk to it.
  rpc::ConnectionOptions plain;
  plain.address = (*server)->address();
  auto insecure = rpc::MakeChannel(plain);
  ASSERT_TRUE(insecure.ok());
  grpc::ClientContext plain_context;
  rpc::PrepareContext(&plain_context, plain, std::chrono::seconds(2));
  EXPECT_FALSE(v1::JobService::NewStub(*insecure)->ListJobs(&plain_context, {}, &list).ok());
  // A key without its certificate is refused up front.
  options.tls_cert.clear();
  auto half = Server::Start(options);
  EXPECT_FALSE(half.ok());
}

TEST_F(CoordinatorTest, GangSchedulingStartsEveryRankTogether) {
  v1::Job job = Submit(PretrainSpec("run", 2));
  FakeWorker a(workers_.get(), "a"), b(workers_.get(), "b");
  a.Register();
  EXPECT_FALSE(a.Beat().has_assignment());
  EXPECT_THAT(Get(job.id()).message(), HasSubstr("waiting for 2 idle workers (1 registered"));
  b.Register();
  v1::HeartbeatResponse rb = b.Beat();
  v1::HeartbeatResponse ra = a.Beat();
  ASSERT_TRUE(ra.has_assignment());
  ASSERT_TRUE(rb.has_assignment());
  EXPECT_EQ(ra.assignment().rank(), 0);
  EXPECT_EQ(rb.assignment().rank(), 1);
  EXPECT_EQ(ra.assignment().world_size(), 2);
  EXPECT_EQ(ra.assignment().attempt(), 1);
  EXPECT_FALSE(ra.assignment().resume());
  EXPECT_EQ(ra.assignment().rendezvous_prefix(), rb.assignment().rendezvous_prefix());
  EXPECT_EQ(ra.assignment().data_dir(), std::filesystem::canonical(dir_.path()).string());
  v1::Job running = Get(job.id());
  EXPECT_EQ(running.state(), v1::JOB_STATE_RUNNING);
  EXPECT_THAT(running.workers(), ::testing::ElementsAre("a", "b"));
  // An assignment is repeated until the worker says it runs it.
  EXPECT_TRUE(a.Beat().has_assignment());
  EXPECT_FALSE(a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1).has_assignment());
  b.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  EXPECT_EQ(Get(job.id()).progress().total_steps(), 100);
  // Both ranks must succeed.
  a.Beat(v1::TASK_STATUS_SUCCEEDED, job.id(), 1);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  b.Beat(v1::TASK_STATUS_SUCCEEDED, job.id(), 1);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SUCCEEDED);
}

// parallel: {tp: 2}: each TP group (consecutive ranks) on one host when the
// idle workers allow, in name order otherwise, saying which.
TEST_F(CoordinatorTest, TensorParallelGroupsArePlacedOnOneHostEach) {
  v1::JobSpec spec = PretrainSpec("run", 4);
  spec.set_train_config_yaml(spec.train_config_yaml() + "parallel: {tp: 2}\n");
  std::vector<std::unique_ptr<FakeWorker>> fleet;
  for (const char* name : {"a", "b", "c", "d"}) {
    fleet.push_back(std::make_unique<FakeWorker>(workers_.get(), name));
    fleet.back()->host = fleet.size() % 2 == 1 ? "h1" : "h2";
    fleet.back()->Register();
  }
  v1::Job job = Submit(spec);
  for (auto& w : fleet) w->Beat();
  v1::Job running = Get(job.id());
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING);
  // a and c are on h1, b and d on h2.
  EXPECT_THAT(running.workers(), ::testing::ElementsAre("a", "c", "b", "d"));
  EXPECT_THAT(running.message(), HasSubstr("2 tensor-parallel groups of 2, each on one host"));
  for (auto& w : fleet) w->Beat(v1::TASK_STATUS_SUCCEEDED, job.id(), 1);
  ASSERT_EQ(Get(job.id()).state(), v1::JOB_STATE_SUCCEEDED);

  // world_size must be a multiple of tp, and equal dp x tp when dp is given.
  v1::JobSpec odd = PretrainSpec("run3", 3);
  odd.set_train_config_yaml(odd.train_config_yaml() + "parallel: {tp: 2}\n");
  EXPECT_THAT(TrySubmit(odd).error_message(),
              HasSubstr("parallel.tp: 2 does not divide the job's world_size (3)"));
  v1::JobSpec mismatch = PretrainSpec("run3", 2);
  mismatch.set_train_config_yaml(mismatch.train_config_yaml() + "parallel: {dp: 2, tp: 2}\n");
  EXPECT_THAT(TrySubmit(mismatch).error_message(),
              HasSubstr("spec.world_size: is 2 but parallel: dp 2 x tp 2 needs 4 ranks"));
}

TEST_F(CoordinatorTest, ATensorParallelGroupThatMustSpanHostsStartsAndSaysSo) {
  v1::JobSpec spec = PretrainSpec("run", 2);
  spec.set_train_config_yaml(spec.train_config_yaml() + "parallel: {tp: 2}\n");
  FakeWorker a(workers_.get(), "a"), b(workers_.get(), "b");
  a.host = "h1";
  b.host = "h2";
  a.Register();
  b.Register();
  v1::Job job = Submit(spec);
  a.Beat();
  b.Beat();
  v1::Job running = Get(job.id());
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING);
  EXPECT_THAT(running.workers(), ::testing::ElementsAre("a", "b"));
  EXPECT_THAT(running.message(),
              HasSubstr("tensor-parallel groups of 2 span hosts: no placement puts every group "
                        "on one host; idle workers per host: h1: 1, h2: 1"));
}

// A training job's ranks all run on the kind of device its config names:
// GPU workers for device: cuda, CPU workers otherwise, never a mix.
TEST_F(CoordinatorTest, TrainingJobsRunOnWorkersOfTheirConfigsDeviceKind) {
  FakeWorker cpu(workers_.get(), "a"), gpu0(workers_.get(), "b"), gpu1(workers_.get(), "c");
  gpu0.device = "cuda:0";
  gpu1.device = "cuda:1";
  cpu.Register();
  gpu0.Register();
  gpu1.Register();
  v1::JobSpec cuda_spec = PretrainSpec("gpu-run", 2);
  cuda_spec.set_train_config_yaml(cuda_spec.train_config_yaml() + "device: cuda\n");
  v1::JobSpec cpu_spec = PretrainSpec("cpu-run", 2);
  v1::Job on_cpu = Submit(cpu_spec);
  cpu.Beat();
  gpu0.Beat();
  gpu1.Beat();
  // The CPU job waits although three workers are idle: only one is a CPU.
  v1::Job waiting = Get(on_cpu.id());
  EXPECT_EQ(waiting.state(), v1::JOB_STATE_PENDING);
  EXPECT_THAT(waiting.message(),
              HasSubstr("waiting for 2 idle workers (3 registered, 3 idle, 1 of them cpu: the "
                        "config's device asks for cpu workers)"));
  // The GPU job takes the two GPU workers; the CPU job keeps waiting.
  v1::Job on_gpu = Submit(cuda_spec);
  gpu0.Beat();
  v1::Job running = Get(on_gpu.id());
  ASSERT_EQ(running.state(), v1::JOB_STATE_RUNNING);
  EXPECT_THAT(running.workers(), ::testing::ElementsAre("b", "c"));
  EXPECT_EQ(Get(on_cpu.id()).state(), v1::JOB_STATE_PENDING);
}

TEST_F(CoordinatorTest, LostWorkerAbortsTheAttemptOnEveryRankAndTheJobResumes) {
  v1::Job job = Submit(PretrainSpec("run", 2));
  FakeWorker a(workers_.get(), "a"), b(workers_.get(), "b");
  a.Register();
  b.Register();
  a.Beat();
  b.Beat();
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  b.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  // b goes silent; a keeps beating until the coordinator aborts the attempt.
  v1::HeartbeatResponse response;
  const auto deadline = Clock::now() + 10 * kTimeout;
  while (Clock::now() < deadline) {
    response = a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
    if (!response.cancel_job_id().empty()) break;
    std::this_thread::sleep_for(kTimeout / 10);
  }
  EXPECT_EQ(response.cancel_job_id(), job.id());
  EXPECT_EQ(response.cancel_attempt(), 1);
  v1::Job pending = Get(job.id());
  EXPECT_EQ(pending.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(pending.restarts(), 1);
  EXPECT_THAT(pending.last_failure(), HasSubstr("worker b lost"));
  // a is busy until it confirms the stop; b comes back as a new process.
  a.Beat(v1::TASK_STATUS_CANCELLED, job.id(), 1);
  b.Register();
  v1::HeartbeatResponse rb = b.Beat();
  v1::HeartbeatResponse ra = a.Beat();
  ASSERT_TRUE(ra.has_assignment());
  ASSERT_TRUE(rb.has_assignment());
  EXPECT_EQ(ra.assignment().attempt(), 2);
  EXPECT_TRUE(ra.assignment().resume());
  EXPECT_NE(ra.assignment().rendezvous_prefix(), "");
}

TEST_F(CoordinatorTest, AStoppingWorkerGetsNoNewAssignment) {
  v1::JobSpec spec = PretrainSpec("run", 1);
  v1::Job job = Submit(spec);
  FakeWorker a(workers_.get(), "a");
  a.Register();
  ASSERT_TRUE(a.Beat().has_assignment());
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  // SIGTERM: the task stops and the worker says it is going.
  v1::HeartbeatRequest request;
  request.set_worker_id(a.id());
  request.set_job_id(job.id());
  request.set_attempt(1);
  request.set_status(v1::TASK_STATUS_FAILED);
  request.set_error_code(static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  request.set_message("worker shutting down");
  request.set_stopping(true);
  v1::HeartbeatResponse response;
  grpc::ClientContext context;
  Authorize(&context);
  ASSERT_TRUE(workers_->Heartbeat(&context, request, &response).ok());
  EXPECT_FALSE(response.has_assignment()) << "the restarted attempt must go elsewhere";
  v1::Job pending = Get(job.id());
  EXPECT_EQ(pending.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(pending.restarts(), 1);
  FakeWorker b(workers_.get(), "b");
  b.Register();
  EXPECT_EQ(b.Beat().assignment().attempt(), 2);
}

TEST_F(CoordinatorTest, RegisterValidatesTheRunningTask) {
  v1::RegisterRequest request;
  request.set_name("w");
  request.set_device("cpu");
  request.set_running_job_id("job-1");
  request.set_running_attempt(1);
  request.set_running_rank(-1);
  v1::RegisterResponse response;
  grpc::ClientContext context;
  Authorize(&context);
  grpc::Status s = workers_->Register(&context, request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("running_rank"));
}

TEST_F(CoordinatorTest, TransientRankFailuresRestartUntilMaxRestartsThenFail) {
  v1::JobSpec spec = PretrainSpec("run", 1);
  spec.set_max_restarts(1);
  v1::Job job = Submit(spec);
  FakeWorker a(workers_.get(), "a");
  a.Register();
  ASSERT_TRUE(a.Beat().has_assignment());
  // The reply to the failure already carries the restarted attempt.
  v1::HeartbeatResponse again =
      a.Beat(v1::TASK_STATUS_FAILED, job.id(), 1, static_cast<int>(grpc::StatusCode::UNAVAILABLE),
             "peer went away");
  EXPECT_EQ(Get(job.id()).restarts(), 1);
  EXPECT_THAT(Get(job.id()).last_failure(), HasSubstr("peer went away"));
  ASSERT_TRUE(again.has_assignment());
  EXPECT_EQ(again.assignment().attempt(), 2);
  a.Beat(v1::TASK_STATUS_FAILED, job.id(), 2, static_cast<int>(grpc::StatusCode::UNAVAILABLE),
         "peer went away");
  v1::Job failed = Get(job.id());
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.message(), HasSubstr("gave up after 1 restarts"));
}

TEST_F(CoordinatorTest, APermanentRankFailureFailsTheJobAndStopsTheOtherRanks) {
  v1::Job job = Submit(PretrainSpec("run", 2));
  FakeWorker a(workers_.get(), "a"), b(workers_.get(), "b");
  a.Register();
  b.Register();
  a.Beat();
  b.Beat();
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  b.Beat(v1::TASK_STATUS_FAILED, job.id(), 1, static_cast<int>(grpc::StatusCode::INVALID_ARGUMENT),
         "data.mixture: no corpus code");
  v1::Job failed = Get(job.id());
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.message(), HasSubstr("rank 1 (b): data.mixture: no corpus code"));
  EXPECT_EQ(a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1).cancel_job_id(), job.id());
}

TEST_F(CoordinatorTest, CancelStopsRunningRanksAndFreesThemOnceTheyConfirm) {
  v1::Job job = Submit(PretrainSpec("run", 1));
  FakeWorker a(workers_.get(), "a");
  a.Register();
  a.Beat();
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  v1::CancelJobRequest request;
  request.set_id(job.id());
  v1::Job cancelled;
  grpc::ClientContext context;
  Authorize(&context);
  ASSERT_TRUE(jobs_->CancelJob(&context, request, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_EQ(a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1).cancel_job_id(), job.id());
  v1::ListWorkersResponse listed;
  grpc::ClientContext list_context;
  Authorize(&list_context);
  ASSERT_TRUE(workers_->ListWorkers(&list_context, v1::ListWorkersRequest(), &listed).ok());
  EXPECT_EQ(listed.workers(0).state(), v1::WORKER_STATE_BUSY);
  a.Beat(v1::TASK_STATUS_CANCELLED, job.id(), 1);
  grpc::ClientContext list_again;
  Authorize(&list_again);
  ASSERT_TRUE(workers_->ListWorkers(&list_again, v1::ListWorkersRequest(), &listed).ok());
  EXPECT_EQ(listed.workers(0).state(), v1::WORKER_STATE_IDLE);
}

TEST_F(CoordinatorTest, DependentsWaitAndFailWhenADependencyIsCancelled) {
  v1::Job first = Submit(ExpandSpec("expanded"));
  v1::JobSpec second = PretrainSpec("run", 1);
  second.add_depends_on(first.id());
  v1::Job dependent = Submit(second);
  FakeWorker a(workers_.get(), "a");
  a.Register();
  v1::HeartbeatResponse r = a.Beat();
  ASSERT_TRUE(r.has_assignment());
  EXPECT_EQ(r.assignment().job_id(), first.id());
  EXPECT_THAT(Get(dependent.id()).message(), HasSubstr("waiting for job-1"));
  a.Beat(v1::TASK_STATUS_RUNNING, first.id(), 1);
  a.Beat(v1::TASK_STATUS_SUCCEEDED, first.id(), 1);
  // The dependency succeeded: the dependent runs next (the same reply).
  EXPECT_EQ(Get(dependent.id()).state(), v1::JOB_STATE_RUNNING);

  v1::Job third = Submit(ExpandSpec("other"));
  v1::JobSpec fourth_spec = ExpandSpec("other2");
  fourth_spec.add_depends_on(third.id());
  v1::Job fourth = Submit(fourth_spec);
  v1::CancelJobRequest cancel;
  cancel.set_id(third.id());
  v1::Job out;
  grpc::ClientContext context;
  Authorize(&context);
  ASSERT_TRUE(jobs_->CancelJob(&context, cancel, &out).ok());
  v1::Job failed = WaitFor(fourth.id(), [](const v1::Job& j) { return IsTerminal(j.state()); });
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.message(), HasSubstr("dependency job-3 cancelled"));
}

TEST_F(CoordinatorTest, WatchReplaysEventsThenStreamsUntilTheJobEnds) {
  v1::Job job = Submit(ExpandSpec("out"));
  std::vector<v1::JobEvent> events;
  std::thread watcher([&] {
    v1::WatchJobRequest request;
    request.set_id(job.id());
    grpc::ClientContext context;
    Authorize(&context);
    auto reader = jobs_->WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) events.push_back(event);
    EXPECT_TRUE(reader->Finish().ok());
  });
  FakeWorker a(workers_.get(), "a");
  a.Register();
  a.Beat();
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  a.Beat(v1::TASK_STATUS_SUCCEEDED, job.id(), 1);
  watcher.join();
  ASSERT_GE(events.size(), 3u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence(), int64_t(i) + 1);
  EXPECT_EQ(events.back().state(), v1::JOB_STATE_SUCCEEDED);
  // Resuming after an event sends only the later ones.
  v1::WatchJobRequest request;
  request.set_id(job.id());
  request.set_after_sequence(events.size() - 1);
  grpc::ClientContext context;
  Authorize(&context);
  auto reader = jobs_->WatchJob(&context, request);
  v1::JobEvent event;
  int later = 0;
  while (reader->Read(&event)) {
    EXPECT_EQ(event.sequence(), int64_t(events.size()));
    ++later;
  }
  EXPECT_EQ(later, 1);
}

TEST_F(CoordinatorTest, RestartedCoordinatorKeepsJobsAndAdoptsRunningAttempts) {
  v1::Job kept = Submit(ExpandSpec("pending"));
  v1::Job job = Submit(PretrainSpec("run", 1));
  {
    FakeWorker a(workers_.get(), "a");
    a.Register();
    ASSERT_EQ(a.Beat().assignment().job_id(), kept.id());
    a.Beat(v1::TASK_STATUS_RUNNING, kept.id(), 1);
    ASSERT_EQ(a.Beat(v1::TASK_STATUS_SUCCEEDED, kept.id(), 1).assignment().job_id(), job.id());
    a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  }
  Restart();
  EXPECT_EQ(Get(kept.id()).state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_RUNNING);
  FakeWorker a(workers_.get(), "a");
  a.Register(job.id(), 1, 0);  // It kept running while we were down.
  EXPECT_TRUE(a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1).cancel_job_id().empty());
  // Past the adoption deadline, beating as a live worker does...
  for (auto until = Clock::now() + 2 * kTimeout; Clock::now() < until;) {
    EXPECT_TRUE(a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1).cancel_job_id().empty());
    std::this_thread::sleep_for(kTimeout / 8);
  }
  a.Beat(v1::TASK_STATUS_SUCCEEDED, job.id(), 1);
  EXPECT_EQ(Get(job.id()).state(), v1::JOB_STATE_SUCCEEDED);  // ...it was adopted.
}

TEST_F(CoordinatorTest, RunningAttemptWhoseRanksDoNotReturnAfterARestartIsRestarted) {
  v1::Job job = Submit(PretrainSpec("run", 1));
  {
    FakeWorker a(workers_.get(), "a");
    a.Register();
    a.Beat();
    a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  }
  Restart();
  v1::Job restarted = WaitFor(job.id(), [](const v1::Job& j) { return j.restarts() == 1; });
  EXPECT_EQ(restarted.state(), v1::JOB_STATE_PENDING);
  EXPECT_THAT(restarted.last_failure(), HasSubstr("did not report back"));
}

TEST_F(CoordinatorTest, IngestJobsRunOneAfterAnotherInTheCoordinator) {
  std::filesystem::copy_file(testing::TestTokenizerPath(), dir_.Join("tokenizer.model"));
  std::vector<std::string> ids;
  for (const std::string corpus : {"general", "code", "more"}) {
    std::string text;
    for (int i = 0; i < 200; ++i) absl::StrAppend(&text, corpus, " document number ", i, "\n");
    ASSERT_TRUE(WriteFileAtomic(dir_.Join(corpus + ".txt"), text).ok());
    v1::JobSpec spec;
    spec.set_kind(v1::JOB_KIND_INGEST);
    spec.mutable_ingest()->set_corpus(corpus);
    spec.mutable_ingest()->set_tokenizer("tokenizer.model");
    spec.mutable_ingest()->add_inputs(corpus + ".txt");
    spec.mutable_ingest()->set_split_lines(true);
    ids.push_back(Submit(spec).id());
  }
  // Each finished ingest starts the next from its own thread.
  for (const std::string& id : ids) {
    v1::Job done =
        WaitFor(id, [](const v1::Job& j) { return j.state() >= v1::JOB_STATE_SUCCEEDED; });
    EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.message();
    EXPECT_EQ(done.result().at("documents"), 200);
  }
}

TEST_F(CoordinatorTest, RendezvousServesKeysOfRunningAttemptsOnly) {
  Coordinator& c = server_->coordinator();
  EXPECT_EQ(c.RendezvousSet("job/job-1/attempt/1/x", "v").code(),
            absl::StatusCode::kFailedPrecondition);
  v1::Job job = Submit(PretrainSpec("run", 1));
  FakeWorker a(workers_.get(), "a");
  a.Register();
  const std::string prefix = a.Beat().assignment().rendezvous_prefix();
  ASSERT_TRUE(c.RendezvousSet(prefix + "rank0", "addr0").ok());
  auto values =
      c.RendezvousWait({prefix + "rank0"}, std::chrono::milliseconds(100), [] { return false; });
  ASSERT_TRUE(values.ok());
  EXPECT_EQ(values->front(), "addr0");
  auto missing = c.RendezvousWait({prefix + "rank0", prefix + "rank1"},
                                  std::chrono::milliseconds(50), [] { return false; });
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(missing.status().message(), HasSubstr("rank1"));
  EXPECT_THAT(std::string(missing.status().message()), ::testing::Not(HasSubstr("rank0,")));
}

TEST_F(CoordinatorTest, MetricsExposeJobsWorkersAndRequests) {
  v1::Job job = Submit(PretrainSpec("run", 1));
  FakeWorker a(workers_.get(), "a");
  a.Register();
  a.Beat();
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  const std::string text = server_->metrics().Render();
  EXPECT_THAT(text, HasSubstr("llamapro_jobs{state=\"running\"} 1"));
  EXPECT_THAT(text, HasSubstr("llamapro_workers{state=\"busy\"} 1"));
  EXPECT_THAT(text, HasSubstr("llamapro_job_loss{job_id=\"job-1\""));
  EXPECT_THAT(text, HasSubstr("llamapro_grpc_requests_total{code=\"OK\",method=\"SubmitJob\"} 1"));
  EXPECT_THAT(text,
              HasSubstr("llamapro_grpc_request_duration_seconds_bucket{method=\"Heartbeat\""));
}

TEST_F(CoordinatorTest, InitialPerplexityOutlivesAttemptsAndMfuUsesEveryRanksPeak) {
  v1::Job job = Submit(PretrainSpec("run", 2));
  FakeWorker a(workers_.get(), "a"), b(workers_.get(), "b");
  a.peak_flops = 1e9;
  b.peak_flops = 3e9;
  a.Register();
  b.Register();
  a.Beat();
  b.Beat();
  // Rank 0 (a, first by name) reports the step-0 evaluation, then a later one.
  (*a.progress.mutable_perplexity())["web"] = 20;
  (*a.progress.mutable_perplexity())["code"] = 50;
  a.progress.add_general_corpora("web");
  a.progress.set_model_flops_per_second(2e9);
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  b.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  (*a.progress.mutable_perplexity())["web"] = 22;
  (*a.progress.mutable_perplexity())["code"] = 40;
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 1);
  v1::Progress p = Get(job.id()).progress();
  EXPECT_EQ(p.perplexity().at("web"), 22);
  EXPECT_EQ(p.initial_perplexity().at("web"), 20);
  EXPECT_EQ(p.initial_perplexity().at("code"), 50);
  EXPECT_DOUBLE_EQ(p.mfu(), 2e9 / (1e9 + 3e9));
  const std::string text = server_->metrics().Render();
  EXPECT_THAT(text, HasSubstr("llamapro_job_initial_perplexity{job_id=\"job-1\",name=\"\","
                              "kind=\"pretrain\",corpus=\"web\",role=\"general\"} 20"));
  EXPECT_THAT(text, HasSubstr("llamapro_job_perplexity{job_id=\"job-1\",name=\"\","
                              "kind=\"pretrain\",corpus=\"code\",role=\"domain\"} 40"));
  EXPECT_THAT(text, HasSubstr("llamapro_job_mfu{job_id=\"job-1\",name=\"\","
                              "kind=\"pretrain\"} 0.5"));
  EXPECT_THAT(text, HasSubstr("llamapro_worker_peak_flops{worker=\"b\"} 3000000000"));

  // A transient failure restarts the attempt, which resumes from a
  // checkpoint and evaluates again: the reference stays the first value.
  a.Beat(v1::TASK_STATUS_FAILED, job.id(), 1, static_cast<int>(grpc::StatusCode::UNAVAILABLE),
         "peer went away");
  b.Beat(v1::TASK_STATUS_CANCELLED, job.id(), 1);
  a.Beat();
  b.Beat();
  a.progress.mutable_perplexity()->clear();
  (*a.progress.mutable_perplexity())["web"] = 25;
  a.Beat(v1::TASK_STATUS_RUNNING, job.id(), 2);
  p = WaitFor(job.id(), [](const v1::Job& j) {
        return j.progress().perplexity().contains("web") &&
               j.progress().perplexity().at("web") == 25;
      }).progress();
  EXPECT_EQ(p.initial_perplexity().at("web"), 20);
  EXPECT_EQ(p.initial_perplexity().at("code"), 50);
  EXPECT_EQ(p.mfu(), 0.5);
}

}  // namespace
}  // namespace llamapro::coordinator
