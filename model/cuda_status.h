// absl::Status for the CUDA runtime calls of the CUDA backend's host code
// (model/cuda_llama_train.cc, train/cuda_*.cc, train/nccl_communicator.cc),
// and making a device current for a scope. Header-only; CUDA builds only.
// (kernels/cuda/ keeps its own CudaStatus: its test binaries link no Abseil.)
#ifndef LLAMAPRO_MODEL_CUDA_STATUS_H_
#define LLAMAPRO_MODEL_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/cuda/device.h"

namespace llamapro {

// "<call> failed: cudaErrorX: <description>": ResourceExhausted for an
// out-of-memory, Internal otherwise.
inline absl::Status CudaCallError(cudaError_t err, absl::string_view call) {
  std::string message =
      absl::StrCat(call, " failed: ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

// A kernels/cuda/ outcome (a launcher's or cuBLASLt's) as a status.
inline absl::Status FromCuda(const cuda::CudaStatus& status) {
  return status.ok() ? absl::OkStatus() : absl::InternalError(status.message());
}

namespace cuda_internal {
inline absl::Status CallFailedAt(cudaError_t err, const char* expr, const char* file, int line) {
  return CudaCallError(err, absl::StrCat(expr, " at ", file, ":", line));
}
}  // namespace cuda_internal

// Makes `device` current for its lifetime and restores the caller's device.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) : device_(device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device_) {
      const cudaError_t err = cudaSetDevice(device_);
      if (err != cudaSuccess)
        status_ = CudaCallError(err, absl::StrCat("cudaSetDevice(", device_, ")"));
    }
  }
  ~ScopedDevice() {
    if (previous_ >= 0 && previous_ != device_) (void)cudaSetDevice(previous_);
  }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int device_;
  int previous_ = -1;
  absl::Status status_;
};

}  // namespace llamapro

// Returns the status of a failed CUDA runtime call, naming the expression and
// where it was made.
#define LP_CUDA_RETURN_IF_ERROR(expr)                                                          \
  do {                                                                                         \
    const cudaError_t lp_cuda_err_ = (expr);                                                   \
    if (lp_cuda_err_ != cudaSuccess) [[unlikely]] {                                            \
      return ::llamapro::cuda_internal::CallFailedAt(lp_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                                          \
  } while (false)

#endif  // LLAMAPRO_MODEL_CUDA_STATUS_H_
