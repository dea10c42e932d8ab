// The NCCL implementation of Communicator (base/collectives.h): one rank per
// CUDA device, bootstrapped through a RendezvousStore (train/communicator.h).
//
//   * Host-buffer collectives (the Communicator interface) stage through a
//     device scratch buffer and a pinned host buffer owned by the
//     communicator, run on the communicator's own stream and are synchronous:
//     they return when the result is back in the caller's buffer. Every rank
//     receives the same bits (NCCL leaves identical copies on every rank).
//   * Device collectives (the ...Device methods) only enqueue on the
//     caller's stream; the caller orders its own work after them and may
//     bound the wait with WaitStream.
//   * Nothing waits forever. The communicator is created non-blocking
//     (ncclConfig_t::blocking = 0): initialisation, enqueueing (ncclInProgress)
//     and every host-side wait poll ncclCommGetAsyncError and the stream, and
//     give up after NcclOptions::timeout with DeadlineExceeded naming what
//     timed out; an NCCL error gives Internal naming the call, its
//     ncclGetErrorString and ncclGetLastError. Either aborts the communicator
//     (ncclCommAbort): every later call then fails with FailedPrecondition,
//     and the job's attempt is over (build a new communicator to retry).
//
// NCCL facts this relies on: one rank per device within a communicator (two
// ranks on one GPU fail at init with ncclInvalidUsage, "Duplicate GPU
// detected"); every rank issues the same collectives in the same order.
//
// Compiled only when LLAMAPRO_HAVE_CUDA. Not thread-safe: one thread drives a
// communicator. Its calls make `device` current for their duration and
// restore the caller's device.
#ifndef LLAMAPRO_TRAIN_NCCL_COMMUNICATOR_H_
#define LLAMAPRO_TRAIN_NCCL_COMMUNICATOR_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "base/collectives.h"
#include "train/communicator.h"

namespace llamapro {

struct NcclOptions {
  // Keys are namespaced by it (e.g. "job/<id>/attempt/<n>"): the unique id is
  // published under "<prefix>/nccl/unique_id" ("nccl/unique_id" when empty).
  std::string prefix;
  // The bound on every wait: the unique id's rendezvous, the communicator's
  // initialisation (all ranks joining), each enqueue and each host-side wait
  // for a collective to complete.
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
};

// The store key of the unique id for `prefix`.
std::string NcclUniqueIdKey(absl::string_view prefix);
// An ncclUniqueId as 2 * NCCL_UNIQUE_ID_BYTES lowercase hex digits, and back
// (InvalidArgument for another length or a non-hex digit; either case is
// accepted).
std::string EncodeNcclUniqueId(const ncclUniqueId& id);
absl::StatusOr<ncclUniqueId> DecodeNcclUniqueId(absl::string_view hex);
// The checks MakeNcclCommunicator makes before touching a device:
// world_size >= 1, 0 <= rank < world_size, device >= 0 (InvalidArgument
// naming the value otherwise).
absl::Status ValidateNcclArguments(int rank, int world_size, int device);

// One span of device memory for a grouped device collective.
struct NcclDeviceSpan {
  float* data = nullptr;
  size_t n = 0;
};

class NcclCommunicator : public Communicator {
 public:
  // Finalizes and destroys the communicator (aborts it instead after an
  // error, or when finalizing takes longer than the timeout), and frees the
  // stream and the staging buffers.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int world_size() const override { return world_size_; }

  // --- Host buffers: synchronous, staged through the device. ---------------
  absl::Status AllReduceSum(float* data, size_t n) override;
  absl::Status AllReduceSum(double* data, size_t n) override;
  absl::Status AllReduceSum(int64_t* data, size_t n) override;
  // Unequal counts are gathered padded to the largest count (one
  // ncclAllGather) and compacted on the host.
  absl::Status AllGather(const float* in, float* out, const std::vector<size_t>& counts) override;
  // An all-reduce of one value: NCCL has no barrier.
  absl::Status Barrier() override;
  // A true ncclReduceScatter when world_size() divides n: rank r's part is
  // then [n * r / world_size(), n * (r + 1) / world_size()), as ZeroShards
  // cuts it, and only that part is copied back (the rest of `data` keeps the
  // caller's values). Otherwise the documented fallback: an all-reduce of
  // all n values. Note that NCCL's reduce-scatter may sum in another order
  // than its all-reduce, so the two are not guaranteed to be bit-identical.
  absl::Status ReduceScatterSum(float* data, size_t n) override;

  // --- Device buffers: enqueued on `stream` only. --------------------------
  // In place: data = sum over ranks.
  absl::Status AllReduceSumDevice(float* data, size_t n, cudaStream_t stream);
  // All spans in one NCCL group (one fused launch), each summed in place.
  absl::Status AllReduceSumDevice(std::span<const NcclDeviceSpan> spans, cudaStream_t stream);
  // out[r * count .. (r + 1) * count) = rank r's `in` (count values each).
  absl::Status AllGatherDevice(const float* in, float* out, size_t count, cudaStream_t stream);
  // out = rank()'s count values of the sum of every rank's `in`
  // (world_size() * count values).
  absl::Status ReduceScatterSumDevice(const float* in, float* out, size_t count,
                                      cudaStream_t stream);

  // Blocks until the work enqueued so far on `stream` completes, polling the
  // communicator for asynchronous errors; DeadlineExceeded (naming `what`)
  // after the timeout, which aborts the communicator.
  absl::Status WaitStream(cudaStream_t stream, absl::string_view what);
  // The communicator's asynchronous error, if any (Internal, aborting it).
  absl::Status CheckAsyncError();
  // Aborts the communicator now (idempotent): in-flight kernels stop and
  // every later call fails. For a job that saw another rank fail.
  void Abort();
  bool aborted() const { return comm_ == nullptr; }

  int device() const { return device_; }
  ncclComm_t comm() const { return comm_; }  // nullptr once aborted.
  // The stream host-buffer collectives run on.
  cudaStream_t stream() const { return stream_; }
  const NcclOptions& options() const { return options_; }

 private:
  friend absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(
      int rank, int world_size, int device, RendezvousStore* store, const NcclOptions& options);
  NcclCommunicator(int rank, int world_size, int device, const NcclOptions& options)
      : rank_(rank), world_size_(world_size), device_(device), options_(options) {}

  // `result` of NCCL call `call`: ok; ncclInProgress waited out (bounded);
  // or an error status (the communicator aborted).
  absl::Status Settle(ncclResult_t result, absl::string_view call);
  absl::Status Fail(absl::Status status);  // Aborts, then returns `status`.
  absl::Status Usable() const;             // FailedPrecondition once aborted.
  absl::Status Reserve(size_t bytes);      // Grows the staging buffers.
  absl::Status CopyIn(const void* host, size_t bytes, size_t offset = 0);
  absl::Status CopyOut(void* host, size_t bytes, size_t offset = 0);
  template <typename T>
  absl::Status HostAllReduce(T* data, size_t n, ncclDataType_t type, absl::string_view what);

  int rank_;
  int world_size_;
  int device_;
  NcclOptions options_;
  ncclComm_t comm_ = nullptr;
  bool failed_ = false;       // An error was seen: the destructor aborts.
  std::string abort_reason_;  // Why comm_ is gone (for Usable()).
  cudaStream_t stream_ = nullptr;
  void* device_scratch_ = nullptr;
  void* host_scratch_ = nullptr;  // Pinned, same capacity.
  size_t scratch_bytes_ = 0;
};

// Rank 0 calls ncclGetUniqueId and publishes it (hex) under
// NcclUniqueIdKey(options.prefix); the other ranks wait for it (at most
// options.timeout); then every rank initialises its communicator on `device`
// (non-blocking, polled, at most options.timeout for all ranks to join).
// `store` may be nullptr when world_size == 1. Errors: InvalidArgument (bad
// rank, world size, device, missing store, malformed id); FailedPrecondition
// ("no CUDA device <d> ...": the ordinal is not below cudaGetDeviceCount, or
// there is no driver); DeadlineExceeded (the id never came, or not every
// rank joined in time); Internal (a failed CUDA or NCCL call, naming it).
absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(int rank, int world_size,
                                                                       int device,
                                                                       RendezvousStore* store,
                                                                       const NcclOptions& options);

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_NCCL_COMMUNICATOR_H_
