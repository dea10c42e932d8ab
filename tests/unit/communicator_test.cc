// The file rendezvous store and the Gloo communicator (train/communicator.h):
// real ranks (threads of this process, each with its own communicator, or a
// forked process) talking over loopback TCP.
#include "train/communicator.h"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <latch>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/test_util.h"

namespace llamapro {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// --- the file rendezvous store ---------------------------------------------------

TEST(CommunicatorFileStoreTest, WaitReturnsTheValuesInTheOrderOfTheKeys) {
  testing::ScratchDir scratch;
  std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(scratch.Join("store"));
  ASSERT_TRUE(store->Set("b", "value of b").ok());
  ASSERT_TRUE(store->Set("a", "value of a").ok());
  ASSERT_TRUE(store->Set("empty", "").ok());
  absl::StatusOr<std::vector<std::string>> values =
      store->Wait({"a", "empty", "b"}, milliseconds(0));
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(*values, (std::vector<std::string>{"value of a", "", "value of b"}));
}

TEST(CommunicatorFileStoreTest, SetReplacesAnEarlierValue) {
  testing::ScratchDir scratch;
  std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(scratch.path());
  ASSERT_TRUE(store->Set("key", "first").ok());
  ASSERT_TRUE(store->Set("key", "second").ok());
  absl::StatusOr<std::vector<std::string>> values = store->Wait({"key"}, milliseconds(0));
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(values->front(), "second");
}

TEST(CommunicatorFileStoreTest, KeysWithPathCharactersStayInsideTheDirectoryAndRoundTrip) {
  testing::ScratchDir scratch;
  const std::string dir = scratch.Join("store");
  std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(dir);
  const std::vector<std::string> keys = {
      "../escaped",           "/etc/passwd",         "job/7/attempt/0/rank_1", ".", "",
      std::string("a\0b", 3), std::string(600, 'x'),  // Too long to hex-encode into a file name.
      std::string(601, 'x')};
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(store->Set(keys[i], absl::StrCat("value ", i)).ok()) << i;
  }
  absl::StatusOr<std::vector<std::string>> values = store->Wait(keys, milliseconds(0));
  ASSERT_TRUE(values.ok()) << values.status();
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ((*values)[i], absl::StrCat("value ", i));
  // One plain file per key, nothing else, and nothing written beside the directory.
  absl::StatusOr<std::vector<std::string>> files = ListFiles(dir);
  ASSERT_TRUE(files.ok()) << files.status();
  EXPECT_EQ(files->size(), keys.size());
  EXPECT_EQ(scratch.Entries(), std::vector<std::string>{"store"});
}

TEST(CommunicatorFileStoreTest, WaitTimesOutWithDeadlineExceededNamingOnlyTheMissingKeys) {
  testing::ScratchDir scratch;
  std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(scratch.path());
  ASSERT_TRUE(store->Set("present", "1").ok());
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::vector<std::string>> values =
      store->Wait({"present", "absent_one", "absent_two"}, milliseconds(200));
  const Clock::duration waited = Clock::now() - start;
  ASSERT_TRUE(absl::IsDeadlineExceeded(values.status())) << values.status();
  EXPECT_THAT(values.status().message(), HasSubstr("\"absent_one\", \"absent_two\""));
  EXPECT_THAT(values.status().message(), Not(HasSubstr("\"present\"")));
  EXPECT_GE(waited, milliseconds(200));
  EXPECT_LT(waited, milliseconds(5000));
}

TEST(CommunicatorFileStoreTest, WaitSeesAKeySetLaterThroughAnotherStoreOnTheSameDirectory) {
  testing::ScratchDir scratch;
  std::unique_ptr<RendezvousStore> waiter = MakeFileRendezvousStore(scratch.Join("shared"));
  std::unique_ptr<RendezvousStore> setter = MakeFileRendezvousStore(scratch.Join("shared"));
  absl::StatusOr<std::vector<std::string>> values;
  std::thread waiting([&] { values = waiter->Wait({"late"}, milliseconds(30000)); });
  ASSERT_TRUE(setter->Set("late", "arrived").ok());
  waiting.join();
  ASSERT_TRUE(values.ok()) << values.status();
  EXPECT_EQ(values->front(), "arrived");
}

// --- the Gloo communicator -------------------------------------------------------

GlooOptions TestOptions(absl::string_view prefix, milliseconds timeout = milliseconds(30000)) {
  GlooOptions options;
  options.prefix = std::string(prefix);
  options.timeout = timeout;
  return options;
}

using RankBody = std::function<absl::Status(Communicator& communicator)>;

// Runs ranks 0..joining-1 of a `world_size` job, one thread each, each with its
// own store object over `dir` and its own communicator. Returns each rank's
// status: from joining, else from `body`.
std::vector<absl::Status> RunRanks(int world_size, const std::string& dir,
                                   const GlooOptions& options, const RankBody& body,
                                   int joining = -1) {
  if (joining < 0) joining = world_size;
  std::vector<absl::Status> statuses(joining);
  std::vector<std::thread> threads;
  threads.reserve(joining);
  for (int rank = 0; rank < joining; ++rank) {
    threads.emplace_back([&, rank] {
      std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(dir);
      absl::StatusOr<std::unique_ptr<Communicator>> communicator =
          MakeGlooCommunicator(rank, world_size, store.get(), options);
      if (!communicator.ok()) {
        statuses[rank] = communicator.status();
        return;
      }
      if ((*communicator)->rank() != rank || (*communicator)->world_size() != world_size) {
        statuses[rank] =
            absl::InternalError(absl::StrCat("rank ", rank, " got rank ", (*communicator)->rank(),
                                             " of ", (*communicator)->world_size()));
        return;
      }
      statuses[rank] = body(**communicator);
    });
  }
  for (std::thread& thread : threads) thread.join();
  return statuses;
}

void ExpectAllOk(const std::vector<absl::Status>& statuses) {
  for (size_t rank = 0; rank < statuses.size(); ++rank) {
    EXPECT_TRUE(statuses[rank].ok()) << "rank " << rank << ": " << statuses[rank];
  }
}

// Deterministic pseudo-random values (SplitMix64), the same on every run.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Values in [-1, 1) scaled by 2^-8..2^8, so sums round and cancel.
double Noise(int rank, size_t i) {
  const uint64_t bits = Mix((static_cast<uint64_t>(rank) << 40) ^ i);
  const double unit = static_cast<double>(bits >> 11) * 0x1.0p-53 * 2.0 - 1.0;
  return std::ldexp(unit, static_cast<int>(bits % 17) - 8);
}

// The index of the first element whose bits differ, or n if none does.
size_t FirstBitDifference(const float* a, const float* b, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return i;
  }
  return n;
}

template <typename T>
std::vector<T> NoiseVector(int rank, size_t n) {
  std::vector<T> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = static_cast<T>(Noise(rank, i));
  return values;
}

TEST(GlooCommunicatorTest, Int64SumsAreExactForWorldSizesOneToThree) {
  for (int world_size = 1; world_size <= 3; ++world_size) {
    SCOPED_TRACE(absl::StrCat("world size ", world_size));
    testing::ScratchDir scratch;
    constexpr size_t kN = 100'003;  // Not a multiple of any world size.
    // Large values: a sum through floating point would lose the low bits.
    auto value = [](int rank, size_t i) {
      return (int64_t{1} << 52) + static_cast<int64_t>(i) * 1'000'003 - rank * 7 +
             static_cast<int64_t>(Mix(i) % 1000);
    };
    std::vector<std::vector<int64_t>> results(world_size);
    ExpectAllOk(RunRanks(world_size, scratch.path(), TestOptions("int64"), [&](Communicator& c) {
      std::vector<int64_t>& data = results[c.rank()];
      data.resize(kN);
      for (size_t i = 0; i < kN; ++i) data[i] = value(c.rank(), i);
      return c.AllReduceSum(data.data(), data.size());
    }));
    for (int rank = 0; rank < world_size; ++rank) {
      ASSERT_EQ(results[rank].size(), kN);
      for (size_t i = 0; i < kN; ++i) {
        int64_t expected = 0;
        for (int r = 0; r < world_size; ++r) expected += value(r, i);
        ASSERT_EQ(results[rank][i], expected) << "rank " << rank << " element " << i;
      }
    }
  }
}

template <typename T>
void ExpectSumsMatchSequentialSumWithinRounding(int world_size, size_t n) {
  SCOPED_TRACE(absl::StrCat("world size ", world_size, ", n ", n));
  testing::ScratchDir scratch;
  std::vector<std::vector<T>> results(world_size);
  ExpectAllOk(RunRanks(world_size, scratch.path(), TestOptions("float"), [&](Communicator& c) {
    results[c.rank()] = NoiseVector<T>(c.rank(), n);
    return c.AllReduceSum(results[c.rank()].data(), n);
  }));
  const double eps = std::numeric_limits<T>::epsilon();
  for (size_t i = 0; i < n; ++i) {
    T sequential = 0;
    double magnitude = 0;
    for (int r = 0; r < world_size; ++r) {
      sequential += static_cast<T>(Noise(r, i));
      magnitude += std::fabs(Noise(r, i));
    }
    // Each of the world_size - 1 additions rounds by at most half an ulp of
    // a partial sum, in either order.
    const double tolerance = world_size * eps * magnitude;
    for (int rank = 0; rank < world_size; ++rank) {
      ASSERT_NEAR(results[rank][i], sequential, tolerance) << "rank " << rank << " element " << i;
    }
  }
}

TEST(GlooCommunicatorTest, FloatAndDoubleSumsMatchTheSequentialSumWithinRounding) {
  for (int world_size = 1; world_size <= 3; ++world_size) {
    for (size_t n : {size_t{1}, size_t{2}, size_t{7}, size_t{4099}, (size_t{1} << 20) + 3}) {
      ExpectSumsMatchSequentialSumWithinRounding<float>(world_size, n);
      ExpectSumsMatchSequentialSumWithinRounding<double>(world_size, n);
    }
  }
}

TEST(GlooCommunicatorTest, EmptyAllReduceSucceedsAndTheNextOneStillWorks) {
  testing::ScratchDir scratch;
  ExpectAllOk(
      RunRanks(2, scratch.path(), TestOptions("empty"), [](Communicator& c) -> absl::Status {
        if (absl::Status status = c.AllReduceSum(static_cast<float*>(nullptr), 0); !status.ok()) {
          return status;
        }
        double value = c.rank() + 1.0;
        if (absl::Status status = c.AllReduceSum(&value, 1); !status.ok()) return status;
        if (value != 3.0) return absl::InternalError(absl::StrCat("sum is ", value));
        return absl::OkStatus();
      }));
}

// Runs a world-3 float all-reduce of `n` noise values twice on the same
// communicators and returns every rank's results, in order.
std::vector<std::vector<float>> ReduceNoiseTwice(const std::string& dir, absl::string_view prefix,
                                                 size_t n) {
  constexpr int kWorld = 3;
  std::vector<std::vector<float>> results(2 * kWorld);
  ExpectAllOk(RunRanks(kWorld, dir, TestOptions(prefix), [&](Communicator& c) -> absl::Status {
    for (int round = 0; round < 2; ++round) {
      std::vector<float>& data = results[round * kWorld + c.rank()];
      data = NoiseVector<float>(c.rank(), n);
      if (absl::Status status = c.AllReduceSum(data.data(), n); !status.ok()) return status;
    }
    return absl::OkStatus();
  }));
  return results;
}

TEST(GlooCommunicatorTest, FloatSumsAreBitIdenticalOnEveryRankAndAcrossRuns) {
  testing::ScratchDir scratch;
  constexpr size_t kN = (size_t{3} << 20) + 17;  // Several segments per rank, ragged end.
  const std::vector<std::vector<float>> first = ReduceNoiseTwice(scratch.path(), "run1", kN);
  const std::vector<std::vector<float>> second = ReduceNoiseTwice(scratch.path(), "run2", kN);
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    ASSERT_EQ(first[i].size(), kN);
    ASSERT_EQ(second[i].size(), kN);
    EXPECT_EQ(FirstBitDifference(first[i].data(), first[0].data(), kN), kN)
        << "result " << i << " of the first run differs from rank 0's";
    EXPECT_EQ(FirstBitDifference(first[i].data(), second[i].data(), kN), kN)
        << "result " << i << " differs between the runs";
  }
  // And the sums do round (or the comparison above would prove little).
  size_t inexact = 0;
  for (size_t i = 0; i < kN; ++i) {
    const double exact = Noise(0, i) + Noise(1, i) + Noise(2, i);
    if (static_cast<double>(first[0][i]) != exact) ++inexact;
  }
  EXPECT_GT(inexact, kN / 2);
}

TEST(GlooCommunicatorTest, TwentyMillionFloatAllReduceIsExactOnTwoRanks) {
  testing::ScratchDir scratch;
  constexpr size_t kN = 20'000'000;
  std::vector<std::vector<float>> data(2);
  std::vector<double> seconds(2);
  ExpectAllOk(RunRanks(2, scratch.path(), TestOptions("big"), [&](Communicator& c) -> absl::Status {
    std::vector<float>& mine = data[c.rank()];
    mine.resize(kN);
    // Small integers: every sum is exact in float.
    for (size_t i = 0; i < kN; ++i) mine[i] = static_cast<float>((i % 4096) * (c.rank() + 1));
    if (absl::Status status = c.Barrier(); !status.ok()) return status;
    const Clock::time_point start = Clock::now();
    absl::Status status = c.AllReduceSum(mine.data(), kN);
    seconds[c.rank()] = std::chrono::duration<double>(Clock::now() - start).count();
    return status;
  }));
  for (int rank = 0; rank < 2; ++rank) {
    ASSERT_EQ(data[rank].size(), kN);
    for (size_t i = 0; i < kN; ++i) {
      ASSERT_EQ(data[rank][i], static_cast<float>((i % 4096) * 3))
          << "rank " << rank << " at " << i;
    }
  }
  std::printf("[ info ] all-reduce of 20M floats on 2 ranks: %.3f s\n",
              std::max(seconds[0], seconds[1]));
  ::testing::Test::RecordProperty("allreduce_20m_float_2_ranks_ms",
                                  static_cast<int>(std::max(seconds[0], seconds[1]) * 1000));
}

TEST(GlooCommunicatorTest, NoRankLeavesABarrierBeforeEveryRankHasEnteredIt) {
  testing::ScratchDir scratch;
  constexpr int kWorld = 3;
  constexpr int kRounds = 20;
  std::atomic<int> entered{0};
  ExpectAllOk(RunRanks(
      kWorld, scratch.path(), TestOptions("barrier"), [&](Communicator& c) -> absl::Status {
        for (int round = 1; round <= kRounds; ++round) {
          entered.fetch_add(1);
          if (absl::Status status = c.Barrier(); !status.ok()) return status;
          const int seen = entered.load();
          if (seen < round * kWorld) {
            return absl::InternalError(absl::StrCat("rank ", c.rank(), " left barrier ", round,
                                                    " having seen only ", seen, " entries"));
          }
        }
        return absl::OkStatus();
      }));
}

TEST(GlooCommunicatorTest, RankThatNeverJoinsFailsTheOthersWithDeadlineExceededNamingIt) {
  testing::ScratchDir scratch;
  const milliseconds timeout(2000);
  const Clock::time_point start = Clock::now();
  // A world of 3 of which only ranks 0 and 1 start.
  std::vector<absl::Status> statuses = RunRanks(
      3, scratch.path(), TestOptions("missing", timeout),
      [](Communicator&) { return absl::InternalError("joined a world with a rank missing"); },
      /*joining=*/2);
  const Clock::duration waited = Clock::now() - start;
  ASSERT_EQ(statuses.size(), 2u);
  for (const absl::Status& status : statuses) {
    EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
    EXPECT_THAT(status.message(), HasSubstr("rank(s) 2 did not join within 2000 ms"));
  }
  EXPECT_GE(waited, timeout);
  EXPECT_LT(waited, timeout + milliseconds(3000));
}

TEST(GlooCommunicatorTest, AllReduceFailsWithAStatusOnceAPeerHasLeft) {
  testing::ScratchDir scratch;
  std::latch rank1_gone(1);
  std::vector<absl::Status> statuses(2);
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(scratch.path());
      absl::StatusOr<std::unique_ptr<Communicator>> communicator =
          MakeGlooCommunicator(rank, 2, store.get(), TestOptions("leave", milliseconds(5000)));
      if (!communicator.ok()) {
        statuses[rank] = communicator.status();
        rank1_gone.count_down();  // Never leave rank 0 waiting.
        return;
      }
      statuses[rank] = (*communicator)->Barrier();
      if (rank == 1) {
        communicator->reset();  // Closes its connections.
        rank1_gone.count_down();
        return;
      }
      rank1_gone.wait();
      std::vector<float> data(1 << 20, 1.0f);
      statuses[rank] = (*communicator)->AllReduceSum(data.data(), data.size());
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(statuses[1].ok()) << statuses[1];
  const absl::Status& failed = statuses[0];
  EXPECT_TRUE(absl::IsUnavailable(failed) || absl::IsDeadlineExceeded(failed)) << failed;
  EXPECT_THAT(failed.message(), HasSubstr("Gloo all-reduce of 1048576 float values (rank 0 of 2)"));
}

TEST(GlooCommunicatorTest, AllReduceThatAPeerNeverEntersFailsWithDeadlineExceededAfterTheTimeout) {
  testing::ScratchDir scratch;
  const milliseconds timeout(1000);
  std::latch rank0_done(1);
  std::vector<absl::Status> statuses(2);
  Clock::duration waited{};
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(scratch.path());
      absl::StatusOr<std::unique_ptr<Communicator>> communicator =
          MakeGlooCommunicator(rank, 2, store.get(), TestOptions("stall", timeout));
      if (!communicator.ok()) {
        statuses[rank] = communicator.status();
        if (rank == 0) rank0_done.count_down();
        return;
      }
      if (rank == 1) {
        // Connected, but never enters the all-reduce: stays until rank 0 is done.
        rank0_done.wait();
        return;
      }
      std::vector<double> data(1000, 1.0);
      const Clock::time_point start = Clock::now();
      statuses[rank] = (*communicator)->AllReduceSum(data.data(), data.size());
      waited = Clock::now() - start;
      rank0_done.count_down();
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_TRUE(statuses[1].ok()) << statuses[1];
  EXPECT_TRUE(absl::IsDeadlineExceeded(statuses[0])) << statuses[0];
  EXPECT_THAT(statuses[0].message(), HasSubstr("Gloo all-reduce of 1000 double values"));
  EXPECT_GE(waited, timeout);
  EXPECT_LT(waited, timeout + milliseconds(3000));
}

TEST(GlooCommunicatorTest, InvalidRankWorldSizeOrTimeoutIsRejected) {
  testing::ScratchDir scratch;
  std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(scratch.path());
  EXPECT_TRUE(
      absl::IsInvalidArgument(MakeGlooCommunicator(2, 2, store.get(), TestOptions("x")).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(MakeGlooCommunicator(-1, 2, store.get(), TestOptions("x")).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(MakeGlooCommunicator(0, 0, store.get(), TestOptions("x")).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(MakeGlooCommunicator(0, 2, nullptr, TestOptions("x")).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(
      MakeGlooCommunicator(0, 2, store.get(), TestOptions("x", milliseconds(0))).status()));
}

// --- across processes --------------------------------------------------------------

// One rank of the two-process test: joins, reduces noise, writes its result.
absl::Status ReduceNoiseAsProcess(int rank, const std::string& dir, size_t n,
                                  std::vector<float>* result) {
  std::unique_ptr<RendezvousStore> store = MakeFileRendezvousStore(JoinPath(dir, "store"));
  absl::StatusOr<std::unique_ptr<Communicator>> communicator =
      MakeGlooCommunicator(rank, 2, store.get(), TestOptions("fork", milliseconds(20000)));
  if (!communicator.ok()) return communicator.status();
  *result = NoiseVector<float>(rank, n);
  if (absl::Status status = (*communicator)->AllReduceSum(result->data(), n); !status.ok()) {
    return status;
  }
  return WriteFileAtomic(
      JoinPath(dir, absl::StrCat("rank", rank, ".bin")),
      absl::string_view(reinterpret_cast<const char*>(result->data()), n * sizeof(float)));
}

TEST(GlooCommunicatorProcessTest, TwoProcessesAllReduceToTheSameSumBitForBit) {
  testing::ScratchDir scratch;
  constexpr size_t kN = 1'000'003;
  // The child is rank 1; it reports only through its exit code and its file
  // (no gtest assertions in a forked child).
  const pid_t child = fork();
  ASSERT_GE(child, 0) << "fork failed";
  if (child == 0) {
    std::vector<float> result;
    absl::Status status = ReduceNoiseAsProcess(1, scratch.path(), kN, &result);
    if (!status.ok()) std::fprintf(stderr, "child rank 1: %s\n", status.ToString().c_str());
    std::fflush(stderr);
    _exit(status.ok() ? 0 : 1);
  }
  std::vector<float> result;
  absl::Status status = ReduceNoiseAsProcess(0, scratch.path(), kN, &result);
  int wait_status = 0;
  ASSERT_EQ(waitpid(child, &wait_status, 0), child);
  ASSERT_TRUE(status.ok()) << status;
  ASSERT_TRUE(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)
      << "child rank 1 failed (wait status " << wait_status << ")";
  absl::StatusOr<std::string> child_bytes = ReadFile(scratch.Join("rank1.bin"));
  ASSERT_TRUE(child_bytes.ok()) << child_bytes.status();
  ASSERT_EQ(child_bytes->size(), kN * sizeof(float));
  std::vector<float> child_result(kN);
  std::memcpy(child_result.data(), child_bytes->data(), child_bytes->size());
  EXPECT_EQ(FirstBitDifference(child_result.data(), result.data(), kN), kN);
  for (size_t i = 0; i < kN; ++i) {
    ASSERT_EQ(result[i], static_cast<float>(Noise(0, i)) + static_cast<float>(Noise(1, i)))
        << "element " << i;
  }
}

}  // namespace
}  // namespace llamapro
