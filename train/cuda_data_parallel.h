// Data-parallel gradient all-reduce for the CUDA backend, overlapped with the
// backward as PyTorch DDP does it (Li et al., "PyTorch Distributed:
// Experiences on Accelerating Data Parallel Training", 2020).
//
// CudaTrainingPass::ForwardBackward tells its GradientReadyListener when
// gradient groups become final, in backward order. NcclGradientReducer gathers
// them into buckets of about `bucket_bytes`; when a bucket closes it records
// an event on the compute stream, makes its own (high-priority) communication
// stream wait for it, and enqueues the bucket's all-reduces there in one NCCL
// group (in place, sum), so they run while the backward goes on. Finish
// enqueues the last partial bucket and makes the compute stream wait for the
// communication stream: work enqueued on the compute stream after Finish (the
// optimizer) sees the summed gradients. Nothing here blocks the host except
// Wait, which bounds the wait with the communicator's timeout.
//
// Sums, not averages: the trainer already scales each rank's gradients by
// 1 / (targets over every rank). With gradient accumulation, pass the
// listener to the last micro-batch's ForwardBackward only.
//
// Every rank must see the same tensors in the same order (the same model and
// trainable set), so that they enqueue the same collectives in the same order.
//
// Compiled only when LLAMAPRO_HAVE_CUDA. Not thread-safe.
#ifndef LLAMAPRO_TRAIN_CUDA_DATA_PARALLEL_H_
#define LLAMAPRO_TRAIN_CUDA_DATA_PARALLEL_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/cuda_llama_train.h"
#include "train/nccl_communicator.h"

namespace llamapro {

struct NcclGradientReducerOptions {
  // Bucket size: 25 MiB, PyTorch DDP's default. <= 0: one tensor per bucket.
  int64_t bucket_bytes = int64_t{25} << 20;
  // At most this many tensors per bucket (one NCCL group), >= 1.
  size_t max_tensors_per_bucket = 256;
};

// The bucketing rule, device-free. Tensors join the open bucket in order. A
// tensor that would take the open bucket past bucket_bytes (or past
// max_tensors_per_bucket) closes it first; a bucket closes as soon as it
// holds bucket_bytes or max_tensors_per_bucket tensors. So every bucket holds
// at most bucket_bytes, except a tensor of bucket_bytes or more, which gets a
// bucket of its own.
//
// Whether tensor `bytes` must start a new bucket, given the open one's bytes
// and tensor count.
bool StartsNewBucket(int64_t open_bytes, size_t open_tensors, int64_t bytes,
                     const NcclGradientReducerOptions& options);
// Whether a bucket of `bytes` and `tensors` is full.
bool BucketFull(int64_t bytes, size_t tensors, const NcclGradientReducerOptions& options);
// The rule over a whole sequence: indices into `tensor_bytes`, each once, in
// order, cut into buckets.
std::vector<std::vector<size_t>> AssignGradientBuckets(std::span<const int64_t> tensor_bytes,
                                                       const NcclGradientReducerOptions& options);

class NcclGradientReducer : public GradientReadyListener {
 public:
  // Creates the communication stream and events on comm->device(). `comm`
  // must outlive this. InvalidArgument for bad options, Internal for a failed
  // CUDA call.
  static absl::StatusOr<std::unique_ptr<NcclGradientReducer>> Create(
      NcclCommunicator* comm, const NcclGradientReducerOptions& options = {});
  ~NcclGradientReducer() override;
  NcclGradientReducer(const NcclGradientReducer&) = delete;
  NcclGradientReducer& operator=(const NcclGradientReducer&) = delete;

  // Enqueues nothing until a bucket closes; then enqueues as described above.
  // Errors (sticky until the object is rebuilt: the communicator is aborted
  // by then): InvalidArgument for a tensor with n > 0 and no gradient; the
  // communicator's errors.
  absl::Status GradientsReady(std::span<CudaTrainable* const> ready, cudaStream_t stream) override;
  // Ends a step: the last partial bucket, then `compute` waits for the
  // communication stream. Returns the step's first error, if any. Does not
  // block: a host wait on `compute` after it (reading the gradient norm)
  // waits for the all-reduces without a bound; call Wait() first to bound it.
  absl::Status Finish(cudaStream_t compute);

  // Without the listener: every tensor's gradient summed, bucketed by the
  // same rule, enqueued directly on `stream` (no overlap). FailedPrecondition
  // while a step started by GradientsReady is not finished.
  absl::Status AllReduceAll(std::span<CudaTrainable> trainables, cudaStream_t stream);

  // Blocks until the communication stream has drained (at most the
  // communicator's timeout: DeadlineExceeded, aborting it).
  absl::Status Wait();

  cudaStream_t stream() const { return stream_; }
  // Buckets enqueued since Create, for tests and metrics.
  int64_t buckets_launched() const { return buckets_launched_; }
  const NcclGradientReducerOptions& options() const { return options_; }

 private:
  NcclGradientReducer(NcclCommunicator* comm, const NcclGradientReducerOptions& options)
      : comm_(comm), options_(options) {}
  // Adds one tensor, final after the work enqueued so far on `after`, to the
  // open bucket, launching on stream `on` what the rule closes.
  absl::Status Add(const CudaTrainable& tensor, cudaStream_t after, cudaStream_t on);
  // Enqueues the open bucket's all-reduces on `on`, after the work so far on
  // `after` (an event between them when they differ).
  absl::Status Launch(cudaStream_t after, cudaStream_t on);
  absl::Status Record(absl::Status status);  // Keeps the first error.

  NcclCommunicator* comm_;
  NcclGradientReducerOptions options_;
  cudaStream_t stream_ = nullptr;     // Communication.
  cudaEvent_t ready_ = nullptr;       // Recorded on the compute stream per bucket.
  cudaEvent_t done_ = nullptr;        // Recorded on stream_ by Finish.
  std::vector<NcclDeviceSpan> open_;  // The open bucket (capacity kept).
  int64_t open_bytes_ = 0;
  cudaStream_t open_stream_ = nullptr;  // The stream its last tensor was final on.
  bool in_step_ = false;
  int64_t buckets_launched_ = 0;
  absl::Status error_;
};

}  // namespace llamapro

#endif  // LLAMAPRO_TRAIN_CUDA_DATA_PARALLEL_H_
