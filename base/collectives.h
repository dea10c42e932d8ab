// Collectives between the ranks of a job (DESIGN.md: Parallelism): the one
// interface the engine calls, implemented with Gloo between CPU workers
// (train/gloo_communicator.cc) and, later, NCCL between GPUs. It lives in
// base/ because the model's tensor-parallel layers (model/llama_train.h) call
// it as well as the trainer. Every rank of a group calls the same
// collectives in the same order. Results are deterministic for a given group
// size (a fixed reduction order) and every rank receives the same bits.
#ifndef LLAMAPRO_BASE_COLLECTIVES_H_
#define LLAMAPRO_BASE_COLLECTIVES_H_

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"

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
  // out = the concatenation, in rank order, of every rank's `in`; rank r
  // contributes counts[r] values (counts.size() == world_size(), and
  // counts[rank()] values are read from `in`). `out` holds sum(counts).
  virtual absl::Status AllGather(const float* in, float* out,
                                 const std::vector<size_t>& counts) = 0;
  virtual absl::Status Barrier() = 0;

  // Sum over ranks, of which this rank keeps its part: data[offsets[r] ..
  // offsets[r] + counts[r]) for r = rank() ends up holding the sums; the rest
  // of `data` is unspecified. The default is an all-reduce (the same sums,
  // bit for bit, as AllReduceSum; twice a ring reduce-scatter's traffic).
  virtual absl::Status ReduceScatterSum(float* data, size_t n) { return AllReduceSum(data, n); }
};

// The single-process case: every collective is the identity.
class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  absl::Status AllReduceSum(float*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(double*, size_t) override { return absl::OkStatus(); }
  absl::Status AllReduceSum(int64_t*, size_t) override { return absl::OkStatus(); }
  absl::Status AllGather(const float* in, float* out, const std::vector<size_t>& counts) override {
    if (!counts.empty() && counts[0] > 0 && in != out) {
      std::memmove(out, in, counts[0] * sizeof(float));
    }
    return absl::OkStatus();
  }
  absl::Status Barrier() override { return absl::OkStatus(); }
};

// The ranks of a DP x TP job (config `parallel: {dp, tp}`): world rank r is
// TP rank r % tp of data-parallel replica r / tp, so a TP group is tp
// consecutive ranks (one host, when the scheduler can place it so).
struct MeshCoordinates {
  int dp = 1, tp = 1;
  int dp_rank = 0, tp_rank = 0;
  static MeshCoordinates Of(int rank, int dp, int tp) { return {dp, tp, rank / tp, rank % tp}; }
};

}  // namespace llamapro

#endif  // LLAMAPRO_BASE_COLLECTIVES_H_
