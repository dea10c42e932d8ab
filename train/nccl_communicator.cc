#include "train/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "model/cuda_status.h"
#include "train/communicator.h"

namespace llamapro {
namespace {

using Clock = std::chrono::steady_clock;

// NCCL operations per ncclGroupStart/End (older NCCL refuses more than 2048).
constexpr size_t kMaxGroupOps = 512;

// Staging allocated with the communicator (1 MiB): enough for the trainer's
// host collectives (loss sums, counts), so that they never reallocate.
constexpr size_t kInitialScratchBytes = size_t{1} << 20;

std::string CudaErrorText(cudaError_t err) {
  return absl::StrCat(cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}

std::string NcclErrorText(ncclResult_t result, absl::string_view call, ncclComm_t comm) {
  std::string text = absl::StrCat(call, " failed: ", ncclGetErrorString(result));
  const char* last = ncclGetLastError(comm);
  if (last != nullptr && last[0] != '\0') absl::StrAppend(&text, " (last NCCL error: ", last, ")");
  return text;
}

// Backoff for host-side polling: spins briefly (a small collective completes
// in microseconds), then sleeps up to a millisecond between polls.
class Poller {
 public:
  explicit Poller(std::chrono::milliseconds timeout) : deadline_(Clock::now() + timeout) {}
  bool Expired() const { return Clock::now() >= deadline_; }
  void Pause() {
    if (++polls_ < 64) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, std::chrono::microseconds(1000));
  }

 private:
  Clock::time_point deadline_;
  int polls_ = 0;
  std::chrono::microseconds sleep_{20};
};

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string NcclUniqueIdKey(absl::string_view prefix) {
  return prefix.empty() ? std::string("nccl/unique_id") : absl::StrCat(prefix, "/nccl/unique_id");
}

std::string EncodeNcclUniqueId(const ncclUniqueId& id) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * NCCL_UNIQUE_ID_BYTES);
  for (const char c : id.internal) {
    const auto byte = static_cast<unsigned char>(c);
    hex.push_back(kDigits[byte >> 4]);
    hex.push_back(kDigits[byte & 0xf]);
  }
  return hex;
}

absl::StatusOr<ncclUniqueId> DecodeNcclUniqueId(absl::string_view hex) {
  if (hex.size() != 2 * NCCL_UNIQUE_ID_BYTES) {
    return absl::InvalidArgumentError(
        absl::StrFormat("malformed NCCL unique id: %d characters, expected %d hex digits",
                        hex.size(), 2 * NCCL_UNIQUE_ID_BYTES));
  }
  ncclUniqueId id{};
  for (size_t i = 0; i < NCCL_UNIQUE_ID_BYTES; ++i) {
    const int hi = HexValue(hex[2 * i]);
    const int lo = HexValue(hex[(2 * i) + 1]);
    if (hi < 0 || lo < 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("malformed NCCL unique id: non-hex character at position %d",
                          hi < 0 ? 2 * i : 2 * i + 1));
    }
    id.internal[i] = static_cast<char>((hi << 4) | lo);
  }
  return id;
}

absl::Status ValidateNcclArguments(int rank, int world_size, int device) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("NCCL world size %d: must be at least 1", world_size));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("NCCL rank %d out of range for world size %d", rank, world_size));
  }
  if (device < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CUDA device ordinal %d for NCCL rank %d: must be >= 0", device, rank));
  }
  return absl::OkStatus();
}

// --- NcclCommunicator --------------------------------------------------------

NcclCommunicator::~NcclCommunicator() {
  const ScopedDevice on_device(device_);
  if (comm_ != nullptr && !failed_) {
    // Flush and release cleanly; a finalize that fails or hangs (a peer gone)
    // ends in an abort like any other error.
    ncclResult_t result = ncclCommFinalize(comm_);
    if (result == ncclInProgress) {
      Poller poller(options_.timeout);
      while (ncclCommGetAsyncError(comm_, &result) == ncclSuccess && result == ncclInProgress &&
             !poller.Expired()) {
        poller.Pause();
      }
    }
    if (result == ncclSuccess && ncclCommDestroy(comm_) == ncclSuccess) comm_ = nullptr;
  }
  if (comm_ != nullptr) Abort();
  if (device_scratch_ != nullptr) (void)cudaFreeAsync(device_scratch_, stream_);
  if (host_scratch_ != nullptr) (void)cudaFreeHost(host_scratch_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

void NcclCommunicator::Abort() {
  if (comm_ == nullptr) return;
  const ScopedDevice on_device(device_);
  failed_ = true;
  if (abort_reason_.empty()) abort_reason_ = "aborted by the caller";
  (void)ncclCommAbort(comm_);
  comm_ = nullptr;
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  if (comm_ != nullptr) {
    abort_reason_ = std::string(status.message());
    Abort();
  }
  failed_ = true;
  return status;
}

absl::Status NcclCommunicator::Usable() const {
  if (comm_ != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrFormat("NCCL communicator of rank %d of %d (device %d) was aborted: %s", rank_,
                      world_size_, device_, abort_reason_));
}

absl::Status NcclCommunicator::Settle(ncclResult_t result, absl::string_view call) {
  if (result == ncclSuccess) return absl::OkStatus();
  if (result != ncclInProgress)
    return Fail(absl::InternalError(NcclErrorText(result, call, comm_)));
  Poller poller(options_.timeout);
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
    if (query != ncclSuccess) {
      return Fail(absl::InternalError(NcclErrorText(
          query, absl::StrCat("ncclCommGetAsyncError (waiting for ", call, ")"), comm_)));
    }
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) {
      return Fail(absl::InternalError(NcclErrorText(state, call, comm_)));
    }
    if (poller.Expired()) {
      return Fail(absl::DeadlineExceededError(absl::StrFormat(
          "%s on NCCL rank %d of %d (device %d) still in progress after %d ms%s", call, rank_,
          world_size_, device_, options_.timeout.count(),
          world_size_ > 1 ? ": did every rank join and issue the same collectives?" : "")));
    }
    poller.Pause();
  }
}

absl::Status NcclCommunicator::CheckAsyncError() {
  LP_RETURN_IF_ERROR(Usable());
  ncclResult_t state = ncclSuccess;
  const ncclResult_t query = ncclCommGetAsyncError(comm_, &state);
  if (query != ncclSuccess) {
    return Fail(absl::InternalError(NcclErrorText(query, "ncclCommGetAsyncError", comm_)));
  }
  if (state != ncclSuccess && state != ncclInProgress) {
    return Fail(absl::InternalError(NcclErrorText(state, "NCCL asynchronous operation", comm_)));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::WaitStream(cudaStream_t stream, absl::string_view what) {
  LP_RETURN_IF_ERROR(Usable());
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  Poller poller(options_.timeout);
  while (true) {
    const cudaError_t query = cudaStreamQuery(stream);
    if (query == cudaSuccess) return CheckAsyncError();
    if (query != cudaErrorNotReady) {
      return Fail(CudaCallError(query, absl::StrCat("cudaStreamQuery (waiting for ", what, ")")));
    }
    LP_RETURN_IF_ERROR(CheckAsyncError());
    if (poller.Expired()) {
      return Fail(absl::DeadlineExceededError(absl::StrFormat(
          "%s on NCCL rank %d of %d (device %d) did not complete within %d ms%s", what, rank_,
          world_size_, device_, options_.timeout.count(),
          world_size_ > 1 ? ": is a rank missing, or stuck in another collective?" : "")));
    }
    poller.Pause();
  }
}

absl::Status NcclCommunicator::Reserve(size_t bytes) {
  if (bytes <= scratch_bytes_) return absl::OkStatus();
  const size_t capacity = std::max({bytes, 2 * scratch_bytes_, kInitialScratchBytes});
  // Host collectives are synchronous, so nothing of ours is in flight on the
  // buffers. The device buffer is stream-ordered (cudaMallocAsync): cudaFree
  // would wait for the whole device, NCCL kernels of other streams included,
  // without a bound. Freeing pinned memory may synchronize too, hence the
  // initial capacity: host collectives rarely outgrow it.
  if (device_scratch_ != nullptr) (void)cudaFreeAsync(device_scratch_, stream_);
  if (host_scratch_ != nullptr) (void)cudaFreeHost(host_scratch_);
  device_scratch_ = host_scratch_ = nullptr;
  scratch_bytes_ = 0;
  cudaError_t err = cudaMallocAsync(&device_scratch_, capacity, stream_);
  if (err != cudaSuccess) {
    device_scratch_ = nullptr;
    return Fail(
        CudaCallError(err, absl::StrFormat("cudaMallocAsync(%d bytes of NCCL staging)", capacity)));
  }
  err = cudaMallocHost(&host_scratch_, capacity);
  if (err != cudaSuccess) {
    host_scratch_ = nullptr;
    return Fail(
        CudaCallError(err, absl::StrFormat("cudaMallocHost(%d bytes of NCCL staging)", capacity)));
  }
  scratch_bytes_ = capacity;
  return absl::OkStatus();
}

absl::Status NcclCommunicator::CopyIn(const void* host, size_t bytes, size_t offset) {
  if (bytes == 0) return absl::OkStatus();
  char* pinned = static_cast<char*>(host_scratch_) + offset;
  std::memcpy(pinned, host, bytes);
  const cudaError_t err = cudaMemcpyAsync(static_cast<char*>(device_scratch_) + offset, pinned,
                                          bytes, cudaMemcpyHostToDevice, stream_);
  if (err != cudaSuccess) return Fail(CudaCallError(err, "cudaMemcpyAsync (NCCL staging in)"));
  return absl::OkStatus();
}

absl::Status NcclCommunicator::CopyOut(void* host, size_t bytes, size_t offset) {
  char* pinned = static_cast<char*>(host_scratch_) + offset;
  if (bytes > 0) {
    const cudaError_t err =
        cudaMemcpyAsync(pinned, static_cast<const char*>(device_scratch_) + offset, bytes,
                        cudaMemcpyDeviceToHost, stream_);
    if (err != cudaSuccess) return Fail(CudaCallError(err, "cudaMemcpyAsync (NCCL staging out)"));
  }
  LP_RETURN_IF_ERROR(WaitStream(stream_, "NCCL host collective"));
  if (bytes > 0 && host != nullptr) std::memcpy(host, pinned, bytes);
  return absl::OkStatus();
}

template <typename T>
absl::Status NcclCommunicator::HostAllReduce(T* data, size_t n, ncclDataType_t type,
                                             absl::string_view what) {
  LP_RETURN_IF_ERROR(Usable());
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  const size_t bytes = n * sizeof(T);
  LP_RETURN_IF_ERROR(Reserve(std::max<size_t>(bytes, 1)));
  LP_RETURN_IF_ERROR(CopyIn(data, bytes));
  LP_RETURN_IF_ERROR(Settle(
      ncclAllReduce(device_scratch_, device_scratch_, n, type, ncclSum, comm_, stream_), what));
  return CopyOut(data, bytes);
}

absl::Status NcclCommunicator::AllReduceSum(float* data, size_t n) {
  return HostAllReduce(data, n, ncclFloat32, "ncclAllReduce(float32)");
}
absl::Status NcclCommunicator::AllReduceSum(double* data, size_t n) {
  return HostAllReduce(data, n, ncclFloat64, "ncclAllReduce(float64)");
}
absl::Status NcclCommunicator::AllReduceSum(int64_t* data, size_t n) {
  return HostAllReduce(data, n, ncclInt64, "ncclAllReduce(int64)");
}

absl::Status NcclCommunicator::AllGather(const float* in, float* out,
                                         const std::vector<size_t>& counts) {
  LP_RETURN_IF_ERROR(Usable());
  if (counts.size() != static_cast<size_t>(world_size_)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("NCCL AllGather: %d counts for world size %d", counts.size(), world_size_));
  }
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  const size_t most = *std::max_element(counts.begin(), counts.end());
  const size_t stride = most * sizeof(float);
  LP_RETURN_IF_ERROR(Reserve(std::max<size_t>(stride * world_size_, 1)));
  const size_t mine = static_cast<size_t>(rank_) * stride;
  LP_RETURN_IF_ERROR(CopyIn(in, counts[rank_] * sizeof(float), mine));
  // In place: rank r's values already sit at its slot of the output.
  char* scratch = static_cast<char*>(device_scratch_);
  LP_RETURN_IF_ERROR(
      Settle(ncclAllGather(scratch + mine, scratch, most, ncclFloat32, comm_, stream_),
             "ncclAllGather(float32)"));
  LP_RETURN_IF_ERROR(CopyOut(nullptr, stride * world_size_));
  const char* pinned = static_cast<const char*>(host_scratch_);
  size_t at = 0;
  for (int r = 0; r < world_size_; ++r) {
    if (counts[r] > 0) std::memcpy(out + at, pinned + (r * stride), counts[r] * sizeof(float));
    at += counts[r];
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::Barrier() {
  LP_RETURN_IF_ERROR(Usable());
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  LP_RETURN_IF_ERROR(Reserve(sizeof(int64_t)));
  const cudaError_t err = cudaMemsetAsync(device_scratch_, 0, sizeof(int64_t), stream_);
  if (err != cudaSuccess) return Fail(CudaCallError(err, "cudaMemsetAsync (NCCL barrier)"));
  LP_RETURN_IF_ERROR(
      Settle(ncclAllReduce(device_scratch_, device_scratch_, 1, ncclInt64, ncclSum, comm_, stream_),
             "ncclAllReduce (barrier)"));
  return WaitStream(stream_, "NCCL barrier");
}

absl::Status NcclCommunicator::ReduceScatterSum(float* data, size_t n) {
  const auto world = static_cast<size_t>(world_size_);
  if (n % world != 0) return AllReduceSum(data, n);  // The documented fallback.
  LP_RETURN_IF_ERROR(Usable());
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  const size_t count = n / world;
  const size_t mine = static_cast<size_t>(rank_) * count;
  LP_RETURN_IF_ERROR(Reserve(std::max<size_t>(n * sizeof(float), 1)));
  LP_RETURN_IF_ERROR(CopyIn(data, n * sizeof(float)));
  float* scratch = static_cast<float*>(device_scratch_);
  LP_RETURN_IF_ERROR(Settle(
      ncclReduceScatter(scratch, scratch + mine, count, ncclFloat32, ncclSum, comm_, stream_),
      "ncclReduceScatter(float32)"));
  return CopyOut(data + mine, count * sizeof(float), mine * sizeof(float));
}

absl::Status NcclCommunicator::AllReduceSumDevice(float* data, size_t n, cudaStream_t stream) {
  LP_RETURN_IF_ERROR(Usable());
  if (n == 0) return absl::OkStatus();
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  return Settle(ncclAllReduce(data, data, n, ncclFloat32, ncclSum, comm_, stream),
                "ncclAllReduce(float32, device)");
}

absl::Status NcclCommunicator::AllReduceSumDevice(std::span<const NcclDeviceSpan> spans,
                                                  cudaStream_t stream) {
  LP_RETURN_IF_ERROR(Usable());
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  for (size_t begin = 0; begin < spans.size(); begin += kMaxGroupOps) {
    const size_t end = std::min(spans.size(), begin + kMaxGroupOps);
    LP_RETURN_IF_ERROR(Settle(ncclGroupStart(), "ncclGroupStart"));
    ncclResult_t first_error = ncclSuccess;
    for (size_t i = begin; i < end && first_error == ncclSuccess; ++i) {
      if (spans[i].n == 0) continue;
      first_error = ncclAllReduce(spans[i].data, spans[i].data, spans[i].n, ncclFloat32, ncclSum,
                                  comm_, stream);
    }
    // The group is always closed, even after a failed call inside it.
    const ncclResult_t end_result = ncclGroupEnd();
    if (first_error != ncclSuccess && first_error != ncclInProgress) {
      return Fail(absl::InternalError(
          NcclErrorText(first_error, "ncclAllReduce(float32, device, grouped)", comm_)));
    }
    LP_RETURN_IF_ERROR(Settle(end_result, "ncclGroupEnd (grouped ncclAllReduce)"));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::AllGatherDevice(const float* in, float* out, size_t count,
                                               cudaStream_t stream) {
  LP_RETURN_IF_ERROR(Usable());
  if (count == 0) return absl::OkStatus();
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  return Settle(ncclAllGather(in, out, count, ncclFloat32, comm_, stream),
                "ncclAllGather(float32, device)");
}

absl::Status NcclCommunicator::ReduceScatterSumDevice(const float* in, float* out, size_t count,
                                                      cudaStream_t stream) {
  LP_RETURN_IF_ERROR(Usable());
  if (count == 0) return absl::OkStatus();
  const ScopedDevice on_device(device_);
  if (!on_device.status().ok()) return Fail(on_device.status());
  return Settle(ncclReduceScatter(in, out, count, ncclFloat32, ncclSum, comm_, stream),
                "ncclReduceScatter(float32, device)");
}

// --- Bootstrap ---------------------------------------------------------------

absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(int rank, int world_size,
                                                                       int device,
                                                                       RendezvousStore* store,
                                                                       const NcclOptions& options) {
  LP_RETURN_IF_ERROR(ValidateNcclArguments(rank, world_size, device));
  if (world_size > 1 && store == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("NCCL rank %d of %d: a rendezvous store is required for more than one rank",
                        rank, world_size));
  }
  if (options.timeout.count() <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("NCCL timeout %d ms: must be positive", options.timeout.count()));
  }
  int devices = 0;
  const cudaError_t count_err = cudaGetDeviceCount(&devices);
  if (count_err != cudaSuccess) {
    return absl::FailedPreconditionError(
        absl::StrFormat("no CUDA device %d for NCCL rank %d: cudaGetDeviceCount failed: %s", device,
                        rank, CudaErrorText(count_err)));
  }
  if (device >= devices) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "no CUDA device %d for NCCL rank %d: %d device(s) visible", device, rank, devices));
  }

  const ScopedDevice on_device(device);
  LP_RETURN_IF_ERROR(on_device.status());

  ncclUniqueId id{};
  const std::string key = NcclUniqueIdKey(options.prefix);
  if (rank == 0) {
    const ncclResult_t result = ncclGetUniqueId(&id);
    if (result != ncclSuccess) {
      return absl::InternalError(NcclErrorText(result, "ncclGetUniqueId", nullptr));
    }
    if (world_size > 1) {
      const absl::Status set = store->Set(key, EncodeNcclUniqueId(id));
      if (!set.ok()) {
        return absl::Status(set.code(), absl::StrCat("publishing the NCCL unique id under ", key,
                                                     ": ", set.message()));
      }
    }
  } else {
    absl::StatusOr<std::vector<std::string>> values = store->Wait({key}, options.timeout);
    if (!values.ok()) {
      return absl::Status(values.status().code(),
                          absl::StrFormat("NCCL rank %d of %d waiting for rank 0's unique id: %s",
                                          rank, world_size, values.status().message()));
    }
    if (values->size() != 1) {
      return absl::InternalError(
          absl::StrFormat("rendezvous store returned %d values for %s", values->size(), key));
    }
    LP_ASSIGN_OR_RETURN(id, DecodeNcclUniqueId((*values)[0]));
  }

  std::unique_ptr<NcclCommunicator> comm(
      new NcclCommunicator(rank, world_size, device, options));  // Private constructor.
  int least_priority = 0;
  int greatest_priority = 0;
  cudaError_t err = cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority);
  if (err != cudaSuccess) return CudaCallError(err, "cudaDeviceGetStreamPriorityRange");
  err = cudaStreamCreateWithPriority(&comm->stream_, cudaStreamNonBlocking, greatest_priority);
  if (err != cudaSuccess) {
    comm->stream_ = nullptr;
    return CudaCallError(err, "cudaStreamCreateWithPriority (NCCL stream)");
  }

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // Every call returns at once; we poll, time out and abort.
  const ncclResult_t init = ncclCommInitRankConfig(&comm->comm_, world_size, id, rank, &config);
  if (init != ncclSuccess && init != ncclInProgress && comm->comm_ == nullptr) {
    return absl::InternalError(NcclErrorText(init, "ncclCommInitRankConfig", nullptr));
  }
  LP_RETURN_IF_ERROR(
      comm->Settle(init, absl::StrFormat("ncclCommInitRankConfig(%d ranks)", world_size)));
  LP_RETURN_IF_ERROR(comm->Reserve(kInitialScratchBytes));
  return comm;
}

}  // namespace llamapro
