// Collectives between the ranks of a data-parallel job (DESIGN.md:
// Parallelism). One interface, implemented with Gloo between CPU workers
// (train/gloo_communicator.cc) and, later, NCCL between GPUs. Every rank calls
// the same collectives in the same order. Results are deterministic for a
// given world size (a fixed reduction order).
#ifndef LLAMAPRO_TRAIN_COMMUNICATOR_H_
#define LLAMAPRO_TRAIN_COMMUNICATOR_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace llamapro {

// Not thread-safe: one thread of each rank drives it.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // In place: data = sum over ranks. Errors (a peer gone, a timeout) leave
  // `data` unspecified; the job's attempt is then over.
  virtual absl::Status AllReduceSum(float* data, size_t n) = 0;
  virtual absl::Status AllReduceSum(double* data, size_t n) = 0;
  virtual absl::Status AllReduceSum(int64_t* data, size_t n) = 0;
  virtual absl::Status Barrier() = 0;
};

// The single-process case: every collective is the identity.
class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(double*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(int64_t*, size_t) override { return absl::OkStatus(); }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

// A key-value store the ranks of a job share to find each other (the
// coordinator's rendezvous, or a directory for tests). Thread-safe.
class RendezvousStore {
 public:
  virtual ~RendezvousStore() = default;
  virtual absl::Status Set(absl::string_view key, absl::string_view value) = 0;
  // Waits until every key exists (or the timeout passes: DeadlineExceeded
  // naming the missing keys) and returns their values in order.
  virtual absl::StatusOr<std::vector<std::string>> Wait(const std::vector<std::string>& keys,
                                                        std::chrono::milliseconds timeout) = 0;
};

// A RendezvousStore in a directory shared by the ranks (one file per key,
// written through a temporary file and renamed). For tests and single-machine
// runs without a coordinator.
std::unique_ptr<RendezvousStore> MakeFileRendezvousStore(const std::string& dir);

struct GlooOptions {
  std::string interface_address = "127.0.0.1";  // Where this rank listens.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  std::string prefix;  // Keys are namespaced by it (e.g. "job/<id>/attempt/<n>").
};

// Connects `world_size` ranks over Gloo's TCP transport, bootstrapped through
// `store`. Blocks until every rank has joined or the timeout passes.
absl::StatusOr<std::unique_ptr<Communicator>> MakeGlooCommunicator(int rank, int world_size,
                                                                   RendezvousStore* store,
                                                                   const GlooOptions& options);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_COMMUNICATOR_H_
