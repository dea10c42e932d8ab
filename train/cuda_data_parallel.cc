#include "train/cuda_data_parallel.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "model/cuda_status.h"

namespace llamapro {
namespace {

size_t MaxTensors(const NcclGradientReducerOptions& options) {
  return std::max<size_t>(options.max_tensors_per_bucket, 1);
}

int64_t GradientBytes(const CudaTrainable& tensor) {
  return tensor.n * static_cast<int64_t>(sizeof(float));
}

}  // namespace

bool StartsNewBucket(int64_t open_bytes, size_t open_tensors, int64_t bytes,
                     const NcclGradientReducerOptions& options) {
  if (open_tensors == 0) return false;
  return bytes >= options.bucket_bytes || open_bytes + bytes > options.bucket_bytes ||
         open_tensors >= MaxTensors(options);
}

bool BucketFull(int64_t bytes, size_t tensors, const NcclGradientReducerOptions& options) {
  return bytes >= options.bucket_bytes || tensors >= MaxTensors(options);
}

std::vector<std::vector<size_t>> AssignGradientBuckets(std::span<const int64_t> tensor_bytes,
                                                       const NcclGradientReducerOptions& options) {
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> open;
  int64_t open_bytes = 0;
  for (size_t i = 0; i < tensor_bytes.size(); ++i) {
    if (StartsNewBucket(open_bytes, open.size(), tensor_bytes[i], options)) {
      buckets.push_back(std::move(open));
      open.clear();
      open_bytes = 0;
    }
    open.push_back(i);
    open_bytes += tensor_bytes[i];
    if (BucketFull(open_bytes, open.size(), options)) {
      buckets.push_back(std::move(open));
      open.clear();
      open_bytes = 0;
    }
  }
  if (!open.empty()) buckets.push_back(std::move(open));
  return buckets;
}

absl::StatusOr<std::unique_ptr<NcclGradientReducer>> NcclGradientReducer::Create(
    NcclCommunicator* comm, const NcclGradientReducerOptions& options) {
  if (comm == nullptr) return absl::InvalidArgumentError("NcclGradientReducer: no communicator");
  if (options.max_tensors_per_bucket == 0) {
    return absl::InvalidArgumentError("NcclGradientReducer: max_tensors_per_bucket must be >= 1");
  }
  std::unique_ptr<NcclGradientReducer> dp(new NcclGradientReducer(comm, options));
  const ScopedDevice on_device(comm->device());
  LP_RETURN_IF_ERROR(on_device.status());
  int least_priority = 0;
  int greatest_priority = 0;
  cudaError_t err = cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority);
  if (err != cudaSuccess) return CudaCallError(err, "cudaDeviceGetStreamPriorityRange");
  err = cudaStreamCreateWithPriority(&dp->stream_, cudaStreamNonBlocking, greatest_priority);
  if (err != cudaSuccess) {
    dp->stream_ = nullptr;
    return CudaCallError(err, "cudaStreamCreateWithPriority (data-parallel stream)");
  }
  err = cudaEventCreateWithFlags(&dp->ready_, cudaEventDisableTiming);
  if (err != cudaSuccess) {
    dp->ready_ = nullptr;
    return CudaCallError(err, "cudaEventCreateWithFlags (gradients ready)");
  }
  err = cudaEventCreateWithFlags(&dp->done_, cudaEventDisableTiming);
  if (err != cudaSuccess) {
    dp->done_ = nullptr;
    return CudaCallError(err, "cudaEventCreateWithFlags (all-reduce done)");
  }
  dp->open_.reserve(MaxTensors(options));
  return dp;
}

NcclGradientReducer::~NcclGradientReducer() {
  const ScopedDevice on_device(comm_->device());
  if (done_ != nullptr) (void)cudaEventDestroy(done_);
  if (ready_ != nullptr) (void)cudaEventDestroy(ready_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

absl::Status NcclGradientReducer::Record(absl::Status status) {
  if (error_.ok()) error_ = status;
  return status;
}

absl::Status NcclGradientReducer::Launch(cudaStream_t after, cudaStream_t on) {
  if (open_.empty()) return absl::OkStatus();
  if (after != on) {
    cudaError_t err = cudaEventRecord(ready_, after);
    if (err != cudaSuccess) return Record(CudaCallError(err, "cudaEventRecord (gradients ready)"));
    err = cudaStreamWaitEvent(on, ready_, 0);
    if (err != cudaSuccess) {
      return Record(CudaCallError(err, "cudaStreamWaitEvent (gradients ready)"));
    }
  }
  const absl::Status status = comm_->AllReduceSumDevice(open_, on);
  open_.clear();
  open_bytes_ = 0;
  open_stream_ = nullptr;
  if (!status.ok()) return Record(status);
  ++buckets_launched_;
  return absl::OkStatus();
}

absl::Status NcclGradientReducer::Add(const CudaTrainable& tensor, cudaStream_t after,
                                      cudaStream_t on) {
  if (tensor.n < 0 || (tensor.n > 0 && tensor.grad == nullptr)) {
    return Record(absl::InvalidArgumentError(
        absl::StrFormat("data-parallel all-reduce: tensor %s has %d elements and %s gradient",
                        tensor.param != nullptr ? tensor.param->name : std::string("(unnamed)"),
                        tensor.n, tensor.grad == nullptr ? "no" : "a")));
  }
  const int64_t bytes = GradientBytes(tensor);
  if (StartsNewBucket(open_bytes_, open_.size(), bytes, options_)) {
    LP_RETURN_IF_ERROR(Launch(open_stream_, on));
  }
  open_.push_back({tensor.grad, static_cast<size_t>(tensor.n)});
  open_bytes_ += bytes;
  open_stream_ = after;
  if (BucketFull(open_bytes_, open_.size(), options_)) LP_RETURN_IF_ERROR(Launch(after, on));
  return absl::OkStatus();
}

absl::Status NcclGradientReducer::GradientsReady(std::span<CudaTrainable* const> ready,
                                                 cudaStream_t stream) {
  if (!error_.ok()) return error_;
  in_step_ = true;
  const ScopedDevice on_device(comm_->device());
  if (!on_device.status().ok()) return Record(on_device.status());
  // A bucket is launched after the work of the stream its tensors came from.
  if (!open_.empty() && open_stream_ != stream) LP_RETURN_IF_ERROR(Launch(open_stream_, stream_));
  for (CudaTrainable* tensor : ready) {
    if (tensor == nullptr) {
      return Record(absl::InvalidArgumentError("data-parallel all-reduce: a null tensor"));
    }
    LP_RETURN_IF_ERROR(Add(*tensor, stream, stream_));
  }
  return absl::OkStatus();
}

absl::Status NcclGradientReducer::Finish(cudaStream_t compute) {
  in_step_ = false;
  if (!error_.ok()) {
    open_.clear();
    open_bytes_ = 0;
    return error_;
  }
  const ScopedDevice on_device(comm_->device());
  if (!on_device.status().ok()) return Record(on_device.status());
  LP_RETURN_IF_ERROR(Launch(open_stream_, stream_));
  cudaError_t err = cudaEventRecord(done_, stream_);
  if (err != cudaSuccess) return Record(CudaCallError(err, "cudaEventRecord (all-reduce done)"));
  err = cudaStreamWaitEvent(compute, done_, 0);
  if (err != cudaSuccess)
    return Record(CudaCallError(err, "cudaStreamWaitEvent (all-reduce done)"));
  return absl::OkStatus();
}

absl::Status NcclGradientReducer::AllReduceAll(std::span<CudaTrainable> trainables,
                                               cudaStream_t stream) {
  if (!error_.ok()) return error_;
  if (in_step_) {
    return absl::FailedPreconditionError(
        "data-parallel AllReduceAll while a listener step is not finished (call Finish)");
  }
  const ScopedDevice on_device(comm_->device());
  if (!on_device.status().ok()) return Record(on_device.status());
  // The same rule, enqueued on `stream` itself (no events).
  for (const CudaTrainable& tensor : trainables) LP_RETURN_IF_ERROR(Add(tensor, stream, stream));
  return Launch(stream, stream);
}

absl::Status NcclGradientReducer::Wait() {
  if (!error_.ok()) return error_;
  return Record(comm_->WaitStream(stream_, "data-parallel gradient all-reduce"));
}

}  // namespace llamapro
