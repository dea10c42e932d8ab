// The NCCL communicator and the bucketed data-parallel gradient all-reduce
// (train/nccl_communicator.h, train/cuda_data_parallel.h).
//
//   * Device-free (run everywhere): the bucketing rule, argument checks, the
//     unique id's hex form, and the refusal without a device.
//   * One device: a world of one (collectives are identities), the bucketed
//     listener's plumbing, and the timeouts (a rank that never joins).
//   * Two devices (skipped otherwise: NCCL cannot put two ranks on one GPU):
//     two ranks in two threads, sums and gathers identical on both, the
//     listener's summed gradients, a collective a peer never joins.
//
// The rendezvous store is an in-memory one defined here: the file store lives
// in llamapro_train, which this carryable binary does not link.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "kernels/cuda/device.h"
#include "model/cuda_llama_train.h"
#include "tests/cuda/cuda_test_util.h"
#include "train/communicator.h"
#include "train/cuda_data_parallel.h"
#include "train/nccl_communicator.h"

namespace llamapro {
namespace {

using cuda_test::DeviceBuffer;
using Clock = std::chrono::steady_clock;

class MemoryStore : public RendezvousStore {
 public:
  absl::Status Set(absl::string_view key, absl::string_view value) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      values_[std::string(key)] = std::string(value);
    }
    cv_.notify_all();
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    const auto all_there = [&] {
      for (const std::string& key : keys) {
        if (!values_.contains(key)) return false;
      }
      return true;
    };
    if (!cv_.wait_for(lock, timeout, all_there)) {
      std::string missing;
      for (const std::string& key : keys) {
        if (!values_.contains(key)) absl::StrAppend(&missing, missing.empty() ? "" : ", ", key);
      }
      return absl::DeadlineExceededError(absl::StrCat("keys never set: ", missing));
    }
    std::vector<std::string> out;
    out.reserve(keys.size());
    for (const std::string& key : keys) out.push_back(values_[key]);
    return out;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
};

NcclOptions Options(std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
  NcclOptions options;
  options.prefix = "test/job";
  options.timeout = timeout;
  return options;
}

// --- The bucketing rule ------------------------------------------------------

std::vector<size_t> Flatten(const std::vector<std::vector<size_t>>& buckets) {
  std::vector<size_t> all;
  for (const auto& bucket : buckets) all.insert(all.end(), bucket.begin(), bucket.end());
  return all;
}

int64_t BucketBytes(const std::vector<size_t>& bucket, const std::vector<int64_t>& bytes) {
  int64_t total = 0;
  for (size_t i : bucket) total += bytes[i];
  return total;
}

TEST(GradientBuckets, PreserveOrderAndHoldEveryTensorOnce) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> size(0, 3000);
  std::vector<int64_t> bytes(200);
  for (int64_t& b : bytes) b = size(rng);
  NcclGradientReducerOptions options;
  options.bucket_bytes = 10000;
  const auto buckets = AssignGradientBuckets(bytes, options);
  std::vector<size_t> expected(bytes.size());
  std::iota(expected.begin(), expected.end(), 0);
  EXPECT_EQ(Flatten(buckets), expected);
  for (const auto& bucket : buckets) EXPECT_FALSE(bucket.empty());
}

TEST(GradientBuckets, BucketsFillUpToTheSizeAndNoFurther) {
  const std::vector<int64_t> bytes = {4000, 4000, 2000, 3000, 3000, 3000, 1000, 500};
  NcclGradientReducerOptions options;
  options.bucket_bytes = 10000;
  const auto buckets = AssignGradientBuckets(bytes, options);
  // 4000+4000+2000 fills exactly and closes; 3000*3+1000 likewise; 500 left.
  const std::vector<std::vector<size_t>> expected = {{0, 1, 2}, {3, 4, 5, 6}, {7}};
  EXPECT_EQ(buckets, expected);
  for (size_t b = 0; b < buckets.size(); ++b) {
    EXPECT_LE(BucketBytes(buckets[b], bytes), options.bucket_bytes) << "bucket " << b;
  }
  // Every bucket but the last is closed because the next tensor did not fit.
  for (size_t b = 0; b + 1 < buckets.size(); ++b) {
    EXPECT_GT(BucketBytes(buckets[b], bytes) + bytes[buckets[b + 1][0]], options.bucket_bytes);
  }
}

TEST(GradientBuckets, ATensorLargerThanABucketGetsItsOwn) {
  const std::vector<int64_t> bytes = {100, 200, 50000, 300, 10000, 10001, 5};
  NcclGradientReducerOptions options;
  options.bucket_bytes = 10000;
  const auto buckets = AssignGradientBuckets(bytes, options);
  const std::vector<std::vector<size_t>> expected = {{0, 1}, {2}, {3}, {4}, {5}, {6}};
  EXPECT_EQ(buckets, expected);
}

TEST(GradientBuckets, AtMostMaxTensorsPerBucket) {
  const std::vector<int64_t> bytes(10, 4);
  NcclGradientReducerOptions options;
  options.bucket_bytes = 1 << 20;
  options.max_tensors_per_bucket = 4;
  const auto buckets = AssignGradientBuckets(bytes, options);
  const std::vector<std::vector<size_t>> expected = {{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9}};
  EXPECT_EQ(buckets, expected);
}

TEST(GradientBuckets, DefaultIs25MiBAndNonPositiveMeansOneTensorEach) {
  EXPECT_EQ(NcclGradientReducerOptions().bucket_bytes, 25 * 1024 * 1024);
  const std::vector<int64_t> bytes = {4, 0, 8};
  NcclGradientReducerOptions options;
  options.bucket_bytes = 0;
  const std::vector<std::vector<size_t>> expected = {{0}, {1}, {2}};
  EXPECT_EQ(AssignGradientBuckets(bytes, options), expected);
  EXPECT_TRUE(AssignGradientBuckets({}, NcclGradientReducerOptions()).empty());
}

TEST(GradientBuckets, IncrementalRuleMatchesTheWholeSequence) {
  // The listener applies StartsNewBucket / BucketFull one tensor at a time.
  NcclGradientReducerOptions options;
  options.bucket_bytes = 1000;
  EXPECT_FALSE(StartsNewBucket(0, 0, 5000, options));  // An empty bucket takes anything.
  EXPECT_TRUE(StartsNewBucket(10, 1, 1000, options));  // A full-size tensor goes alone.
  EXPECT_TRUE(StartsNewBucket(600, 2, 401, options));  // Would overflow.
  EXPECT_FALSE(StartsNewBucket(600, 2, 400, options));
  EXPECT_TRUE(BucketFull(1000, 3, options));
  EXPECT_FALSE(BucketFull(999, 3, options));
}

// --- Arguments and the unique id ----------------------------------------------

TEST(NcclArguments, ValidateRejectsBadRankWorldAndDevice) {
  EXPECT_TRUE(ValidateNcclArguments(0, 1, 0).ok());
  EXPECT_TRUE(ValidateNcclArguments(3, 4, 2).ok());
  const struct {
    int rank, world, device;
    const char* names;
  } bad[] = {{-1, 2, 0, "rank -1"},
             {2, 2, 0, "rank 2"},
             {0, 0, 0, "world size 0"},
             {0, -3, 0, "world size -3"},
             {0, 1, -1, "ordinal -1"}};
  for (const auto& c : bad) {
    const absl::Status status = ValidateNcclArguments(c.rank, c.world, c.device);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_TRUE(absl::StrContains(status.message(), c.names)) << status;
  }
}

TEST(NcclArguments, MakeRefusesBadArgumentsBeforeLookingForADevice) {
  MemoryStore store;
  auto comm = MakeNcclCommunicator(2, 2, 0, &store, Options());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
  comm = MakeNcclCommunicator(0, 0, 0, &store, Options());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
  comm = MakeNcclCommunicator(1, 2, 0, nullptr, Options());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "store")) << comm.status();
  comm = MakeNcclCommunicator(0, 1, 0, &store, Options(std::chrono::milliseconds(0)));
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kInvalidArgument) << comm.status();
}

TEST(NcclUniqueId, HexRoundTrip) {
  std::mt19937 rng(3);
  ncclUniqueId id;
  for (char& c : id.internal) c = static_cast<char>(rng() & 0xff);
  id.internal[0] = static_cast<char>(0x00);
  id.internal[1] = static_cast<char>(0xff);
  const std::string hex = EncodeNcclUniqueId(id);
  ASSERT_EQ(hex.size(), 2u * NCCL_UNIQUE_ID_BYTES);
  EXPECT_EQ(hex.substr(0, 4), "00ff");
  for (char c : hex) EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << hex;
  absl::StatusOr<ncclUniqueId> back = DecodeNcclUniqueId(hex);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(std::string(back->internal, NCCL_UNIQUE_ID_BYTES),
            std::string(id.internal, NCCL_UNIQUE_ID_BYTES));
  // Upper case is accepted too.
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  back = DecodeNcclUniqueId(upper);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(std::string(back->internal, NCCL_UNIQUE_ID_BYTES),
            std::string(id.internal, NCCL_UNIQUE_ID_BYTES));
}

TEST(NcclUniqueId, RejectsMalformedIds) {
  ncclUniqueId id{};
  const std::string good = EncodeNcclUniqueId(id);
  const std::vector<std::string> bad = {"",
                                        good.substr(1),
                                        good + "0",
                                        good.substr(2),
                                        "zz" + good.substr(2),
                                        good.substr(0, 100) + "g" + good.substr(101),
                                        good.substr(0, 255) + " "};
  for (const std::string& hex : bad) {
    const absl::StatusOr<ncclUniqueId> decoded = DecodeNcclUniqueId(hex);
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << hex << "': " << decoded.status();
    EXPECT_TRUE(absl::StrContains(decoded.status().message(), "malformed NCCL unique id"));
  }
}

TEST(NcclUniqueId, KeyIsNamespacedByThePrefix) {
  EXPECT_EQ(NcclUniqueIdKey("job/7/attempt/2"), "job/7/attempt/2/nccl/unique_id");
  EXPECT_EQ(NcclUniqueIdKey(""), "nccl/unique_id");
}

TEST(NcclBootstrap, WithoutADeviceIsFailedPreconditionNamingTheDevice) {
  if (cuda::DeviceCount() > 0) GTEST_SKIP() << "a CUDA device exists";
  MemoryStore store;
  const auto comm = MakeNcclCommunicator(0, 1, 0, &store, Options());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "no CUDA device 0")) << comm.status();
}

TEST(NcclBootstrap, ADeviceOrdinalBeyondTheCountIsFailedPrecondition) {
  MemoryStore store;
  const auto comm = MakeNcclCommunicator(0, 1, 1000, &store, Options());
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kFailedPrecondition) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "no CUDA device 1000")) << comm.status();
}

// --- One device --------------------------------------------------------------

class NcclDeviceTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    LP_CUDA_CHECK(cudaSetDevice(0));
  }
};

TEST_F(NcclDeviceTest, WorldOfOneCollectivesAreIdentities) {
  MemoryStore store;
  auto made = MakeNcclCommunicator(0, 1, 0, &store, Options());
  ASSERT_TRUE(made.ok()) << made.status();
  NcclCommunicator& comm = **made;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.world_size(), 1);
  EXPECT_NE(comm.comm(), nullptr);

  std::vector<float> f = {1.5f, -2.0f, 3.25f};
  const std::vector<float> f0 = f;
  ASSERT_TRUE(comm.AllReduceSum(f.data(), f.size()).ok());
  EXPECT_EQ(f, f0);
  std::vector<double> d = {1e300, -0.5};
  const std::vector<double> d0 = d;
  ASSERT_TRUE(comm.AllReduceSum(d.data(), d.size()).ok());
  EXPECT_EQ(d, d0);
  std::vector<int64_t> i = {int64_t{1} << 60, -7};
  const std::vector<int64_t> i0 = i;
  ASSERT_TRUE(comm.AllReduceSum(i.data(), i.size()).ok());
  EXPECT_EQ(i, i0);
  // Larger than the first staging buffer (it grows).
  std::vector<float> big(1 << 20);
  std::iota(big.begin(), big.end(), 0.0f);
  const std::vector<float> big0 = big;
  ASSERT_TRUE(comm.AllReduceSum(big.data(), big.size()).ok());
  EXPECT_EQ(big, big0);

  std::vector<float> out(3, -1.0f);
  ASSERT_TRUE(comm.AllGather(f0.data(), out.data(), {3}).ok());
  EXPECT_EQ(out, f0);
  EXPECT_EQ(comm.AllGather(f0.data(), out.data(), {3, 3}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(comm.Barrier().ok());
  std::vector<float> rs = {4, 5, 6, 7};
  ASSERT_TRUE(comm.ReduceScatterSum(rs.data(), rs.size()).ok());
  EXPECT_EQ(rs, (std::vector<float>{4, 5, 6, 7}));

  // Device collectives, enqueued on a stream of the caller's.
  DeviceBuffer<float> x(std::vector<float>{1, 2, 3, 4});
  DeviceBuffer<float> gathered(4);
  DeviceBuffer<float> scattered(4);
  cudaStream_t stream = nullptr;
  LP_CUDA_CHECK(cudaStreamCreate(&stream));
  ASSERT_TRUE(comm.AllReduceSumDevice(x.get(), 4, stream).ok());
  const NcclDeviceSpan spans[] = {{x.get(), 2}, {x.get() + 2, 2}};
  ASSERT_TRUE(comm.AllReduceSumDevice(spans, stream).ok());
  ASSERT_TRUE(comm.AllGatherDevice(x.get(), gathered.get(), 4, stream).ok());
  ASSERT_TRUE(comm.ReduceScatterSumDevice(x.get(), scattered.get(), 4, stream).ok());
  ASSERT_TRUE(comm.WaitStream(stream, "test stream").ok());
  EXPECT_EQ(x.Download(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(gathered.Download(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(scattered.Download(), (std::vector<float>{1, 2, 3, 4}));
  LP_CUDA_CHECK(cudaStreamDestroy(stream));

  // Aborted: every later call fails, naming why.
  comm.Abort();
  EXPECT_TRUE(comm.aborted());
  const absl::Status after = comm.Barrier();
  EXPECT_EQ(after.code(), absl::StatusCode::kFailedPrecondition) << after;
  EXPECT_TRUE(absl::StrContains(after.message(), "aborted")) << after;
}

// Fake trainable tensors on the current device: gradient i holds
// (i + 1) * scale + k for element k (small integers: sums are exact).
struct FakeTrainables {
  FakeTrainables(const std::vector<int64_t>& sizes, float scale) {
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<float> values(sizes[i]);
      for (int64_t k = 0; k < sizes[i]; ++k) {
        values[k] = static_cast<float>((i + 1) * scale) + static_cast<float>(k % 97);
      }
      buffers.push_back(std::make_unique<DeviceBuffer<float>>(values));
      expected.push_back(values);
      CudaTrainable t;
      t.grad = buffers.back()->get();
      t.n = sizes[i];
      tensors.push_back(t);
    }
  }
  std::vector<std::unique_ptr<DeviceBuffer<float>>> buffers;
  std::vector<std::vector<float>> expected;
  std::vector<CudaTrainable> tensors;
};

const std::vector<int64_t> kTensorSizes = {4096, 5, 70000, 0, 1000, 1000, 1000, 33, 20000, 7, 1};

// Runs one listener step as the training pass would: groups of ready tensors
// in backward order (last tensor first), then Finish on the compute stream.
absl::Status ListenerStep(NcclGradientReducer* dp, std::vector<CudaTrainable>& tensors,
                          cudaStream_t compute, std::vector<int64_t>* arrival_bytes) {
  std::vector<CudaTrainable*> order;
  for (size_t i = tensors.size(); i-- > 0;) order.push_back(&tensors[i]);
  for (size_t begin = 0; begin < order.size(); begin += 3) {
    const size_t end = std::min(order.size(), begin + 3);
    const std::span<CudaTrainable* const> group(order.data() + begin, end - begin);
    for (CudaTrainable* t : group) arrival_bytes->push_back(t->n * 4);
    absl::Status status = dp->GradientsReady(group, compute);
    if (!status.ok()) return status;
  }
  return dp->Finish(compute);
}

TEST_F(NcclDeviceTest, BucketedListenerWorldOfOne) {
  MemoryStore store;
  auto made = MakeNcclCommunicator(0, 1, 0, &store, Options());
  ASSERT_TRUE(made.ok()) << made.status();
  NcclGradientReducerOptions options;
  options.bucket_bytes = 16 * 1024;  // Several buckets, and tensors larger than one.
  auto dp = NcclGradientReducer::Create(made->get(), options);
  ASSERT_TRUE(dp.ok()) << dp.status();
  FakeTrainables fake(kTensorSizes, 1000.0f);
  cudaStream_t compute = nullptr;
  LP_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  for (int step = 0; step < 2; ++step) {  // Reused across steps.
    std::vector<int64_t> arrival;
    const int64_t before = (*dp)->buckets_launched();
    ASSERT_TRUE(ListenerStep(dp->get(), fake.tensors, compute, &arrival).ok());
    EXPECT_EQ((*dp)->buckets_launched() - before,
              static_cast<int64_t>(AssignGradientBuckets(arrival, options).size()));
    ASSERT_TRUE((*dp)->Wait().ok());
    LP_CUDA_CHECK(cudaStreamSynchronize(compute));
    for (size_t i = 0; i < fake.tensors.size(); ++i) {
      EXPECT_EQ(fake.buffers[i]->Download(), fake.expected[i]) << "tensor " << i;
    }
  }
  ASSERT_TRUE((*dp)->AllReduceAll(fake.tensors, compute).ok());
  LP_CUDA_CHECK(cudaStreamSynchronize(compute));
  for (size_t i = 0; i < fake.tensors.size(); ++i) {
    EXPECT_EQ(fake.buffers[i]->Download(), fake.expected[i]) << "tensor " << i;
  }
  // A tensor without a gradient is refused, and the error sticks.
  CudaTrainable broken;
  broken.n = 3;
  CudaTrainable* ready[] = {&broken};
  EXPECT_EQ((*dp)->GradientsReady(ready, compute).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*dp)->Finish(compute).code(), absl::StatusCode::kInvalidArgument);
  LP_CUDA_CHECK(cudaStreamDestroy(compute));
}

TEST_F(NcclDeviceTest, InitTimesOutWhenARankNeverJoins) {
  // Rank 0 of 2 alone: its id is published, nobody joins. One device suffices.
  MemoryStore store;
  const auto timeout = std::chrono::milliseconds(3000);
  const auto start = Clock::now();
  const auto comm = MakeNcclCommunicator(0, 2, 0, &store, Options(timeout));
  const auto elapsed = Clock::now() - start;
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "ncclCommInitRankConfig"))
      << comm.status();
  EXPECT_GE(elapsed, timeout);
  EXPECT_LT(elapsed, timeout + std::chrono::seconds(30)) << "the abort took too long";
}

TEST_F(NcclDeviceTest, WaitingForTheUniqueIdTimesOut) {
  // Rank 1 of 2 whose rank 0 never publishes.
  MemoryStore store;
  const auto timeout = std::chrono::milliseconds(500);
  const auto start = Clock::now();
  const auto comm = MakeNcclCommunicator(1, 2, 0, &store, Options(timeout));
  EXPECT_EQ(comm.status().code(), absl::StatusCode::kDeadlineExceeded) << comm.status();
  EXPECT_TRUE(absl::StrContains(comm.status().message(), "unique id")) << comm.status();
  EXPECT_LT(Clock::now() - start, timeout + std::chrono::seconds(10));
}

// --- Two devices, two ranks in two threads -----------------------------------

class NcclTwoDeviceTest : public NcclDeviceTest {
 protected:
  void SetUp() override {
    NcclDeviceTest::SetUp();
    if (IsSkipped()) return;
    if (cuda::DeviceCount() < 2) {
      GTEST_SKIP() << "needs 2 CUDA devices (NCCL cannot put two ranks on one GPU); "
                   << cuda::DeviceCount() << " visible";
    }
  }
};

// Runs body(rank, comm) for ranks 0 and 1, each in its own thread on device
// `rank`, and returns each rank's status (bootstrap failures included).
std::vector<absl::Status> RunTwoRanks(
    const NcclOptions& options, const std::function<absl::Status(int, NcclCommunicator&)>& body) {
  MemoryStore store;
  std::vector<absl::Status> results(2);
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      LP_CUDA_CHECK(cudaSetDevice(rank));
      auto comm = MakeNcclCommunicator(rank, 2, rank, &store, options);
      if (!comm.ok()) {
        results[rank] = comm.status();
        return;
      }
      results[rank] = body(rank, **comm);
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

absl::Status Check(bool ok, absl::string_view what) {
  return ok ? absl::OkStatus() : absl::InternalError(what);
}

TEST_F(NcclTwoDeviceTest, HostCollectivesSumAndAgreeOnBothRanks) {
  std::vector<std::vector<float>> sums(2), gathers(2), scatters(2), odd_scatters(2);
  const auto results = RunTwoRanks(Options(), [&](int rank, NcclCommunicator& comm) {
    if (comm.rank() != rank || comm.world_size() != 2) return absl::InternalError("rank");
    const float r = static_cast<float>(rank);
    std::vector<float> f = {1 + r, 10 * (1 + r), -0.5f};
    if (auto s = comm.AllReduceSum(f.data(), f.size()); !s.ok()) return s;
    sums[rank] = f;
    std::vector<double> d = {0.25 + rank, 1e10};
    if (auto s = comm.AllReduceSum(d.data(), d.size()); !s.ok()) return s;
    if (auto s = Check(d == std::vector<double>{1.5, 2e10}, "double sums"); !s.ok()) return s;
    std::vector<int64_t> i = {(int64_t{1} << 40) * (rank + 1), -rank};
    if (auto s = comm.AllReduceSum(i.data(), i.size()); !s.ok()) return s;
    if (auto s = Check(i == std::vector<int64_t>{3 * (int64_t{1} << 40), -1}, "int64 sums");
        !s.ok()) {
      return s;
    }
    // Unequal counts: rank 0 gives 3 values, rank 1 gives 1.
    const std::vector<size_t> counts = {3, 1};
    std::vector<float> mine(counts[rank]);
    for (size_t k = 0; k < mine.size(); ++k) mine[k] = 100 * r + static_cast<float>(k);
    gathers[rank].assign(4, -1);
    if (auto s = comm.AllGather(mine.data(), gathers[rank].data(), counts); !s.ok()) return s;
    if (auto s = comm.Barrier(); !s.ok()) return s;
    // Divisible: a true reduce-scatter, rank r keeps [2r, 2r + 2).
    std::vector<float> rs = {1 + r, 2 + r, 3 + r, 4 + r};
    if (auto s = comm.ReduceScatterSum(rs.data(), rs.size()); !s.ok()) return s;
    scatters[rank].assign(rs.begin() + 2 * rank, rs.begin() + 2 * rank + 2);
    std::vector<float> odd = {1 + r, 2 + r, 3 + r};  // Not divisible: the all-reduce fallback.
    if (auto s = comm.ReduceScatterSum(odd.data(), odd.size()); !s.ok()) return s;
    odd_scatters[rank] = odd;
    return absl::OkStatus();
  });
  ASSERT_TRUE(results[0].ok()) << results[0];
  ASSERT_TRUE(results[1].ok()) << results[1];
  EXPECT_EQ(sums[0], (std::vector<float>{3, 30, -1}));
  EXPECT_EQ(sums[0], sums[1]);
  EXPECT_EQ(gathers[0], (std::vector<float>{0, 1, 2, 100}));
  EXPECT_EQ(gathers[0], gathers[1]);
  EXPECT_EQ(scatters[0], (std::vector<float>{3, 5}));
  EXPECT_EQ(scatters[1], (std::vector<float>{7, 9}));
  EXPECT_EQ(odd_scatters[0], (std::vector<float>{3, 5, 7}));
  EXPECT_EQ(odd_scatters[0], odd_scatters[1]);
}

TEST_F(NcclTwoDeviceTest, BucketedListenerSumsTheGradients) {
  std::vector<std::vector<std::vector<float>>> got(2);
  std::vector<std::vector<float>> device_sum(2);
  std::vector<std::vector<float>> all_reduced(2);
  const auto results = RunTwoRanks(Options(), [&](int rank, NcclCommunicator& comm) {
    NcclGradientReducerOptions options;
    options.bucket_bytes = 16 * 1024;
    auto dp = NcclGradientReducer::Create(&comm, options);
    if (!dp.ok()) return dp.status();
    // Rank r's gradients: scale 1000 * (r + 1); the sum is the scale-3000
    // values plus the index pattern twice.
    FakeTrainables fake(kTensorSizes, 1000.0f * static_cast<float>(rank + 1));
    cudaStream_t compute = nullptr;
    LP_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
    std::vector<int64_t> arrival;
    if (auto s = ListenerStep(dp->get(), fake.tensors, compute, &arrival); !s.ok()) return s;
    if (auto s = (*dp)->Wait(); !s.ok()) return s;
    LP_CUDA_CHECK(cudaStreamSynchronize(compute));
    for (const auto& buffer : fake.buffers) got[rank].push_back(buffer->Download());
    // Then once more without the listener: the sums double again (both
    // ranks now hold the same sums).
    if (auto s = (*dp)->AllReduceAll(fake.tensors, compute); !s.ok()) return s;
    if (auto s = comm.WaitStream(compute, "AllReduceAll"); !s.ok()) return s;
    all_reduced[rank] = fake.buffers[2]->Download();
    DeviceBuffer<float> x(std::vector<float>{1.0f + static_cast<float>(rank), 5.0f});
    if (auto s = comm.AllReduceSumDevice(x.get(), 2, compute); !s.ok()) return s;
    if (auto s = comm.WaitStream(compute, "device all-reduce"); !s.ok()) return s;
    device_sum[rank] = x.Download();
    LP_CUDA_CHECK(cudaStreamDestroy(compute));
    return absl::OkStatus();
  });
  ASSERT_TRUE(results[0].ok()) << results[0];
  ASSERT_TRUE(results[1].ok()) << results[1];
  FakeTrainables one(kTensorSizes, 1000.0f), two(kTensorSizes, 2000.0f);
  for (size_t i = 0; i < kTensorSizes.size(); ++i) {
    std::vector<float> expected(one.expected[i].size());
    for (size_t k = 0; k < expected.size(); ++k) {
      expected[k] = one.expected[i][k] + two.expected[i][k];
    }
    EXPECT_EQ(got[0][i], expected) << "tensor " << i;
    EXPECT_EQ(got[1][i], expected) << "tensor " << i;
    if (i == 2) {
      for (float& v : expected) v *= 2;
      EXPECT_EQ(all_reduced[0], expected);
      EXPECT_EQ(all_reduced[1], expected);
    }
  }
  EXPECT_EQ(device_sum[0], (std::vector<float>{3, 10}));
  EXPECT_EQ(device_sum[1], device_sum[0]);
}

TEST_F(NcclTwoDeviceTest, ACollectiveAPeerNeverJoinsTimesOut) {
  const auto timeout = std::chrono::milliseconds(3000);
  std::mutex mu;
  std::condition_variable cv;
  bool rank0_done = false;
  Clock::duration elapsed{};
  absl::Status after_abort;
  const auto results = RunTwoRanks(Options(timeout), [&](int rank, NcclCommunicator& comm) {
    if (auto s = comm.Barrier(); !s.ok()) return s;  // Both joined.
    absl::Status status;
    if (rank == 0) {
      std::vector<float> f(1000, 1.0f);
      const auto start = Clock::now();
      status = comm.AllReduceSum(f.data(), f.size());  // Rank 1 never calls it.
      elapsed = Clock::now() - start;
      after_abort = comm.Barrier();
      {
        std::lock_guard<std::mutex> lock(mu);
        rank0_done = true;
      }
      cv.notify_all();
    } else {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return rank0_done; });
      comm.Abort();  // Within a node NCCL wants every rank to abort.
    }
    return status;
  });
  EXPECT_EQ(results[0].code(), absl::StatusCode::kDeadlineExceeded) << results[0];
  EXPECT_TRUE(results[1].ok()) << results[1];
  EXPECT_GE(elapsed, timeout);
  EXPECT_LT(elapsed, timeout + std::chrono::seconds(30));
  EXPECT_EQ(after_abort.code(), absl::StatusCode::kFailedPrecondition) << after_abort;
}

}  // namespace
}  // namespace llamapro
