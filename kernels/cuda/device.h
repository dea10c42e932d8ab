// CUDA device discovery and error checking. Compiled only when CUDA is
// enabled (LLAMAPRO_HAVE_CUDA).
#ifndef LLAMAPRO_KERNELS_CUDA_DEVICE_H_
#define LLAMAPRO_KERNELS_CUDA_DEVICE_H_

#include <cuda_runtime_api.h>

#include <string>
#include <utility>

namespace llamapro::cuda {

// Outcome of a host-side CUDA library call sequence: ok, or a message naming
// the call that failed and why. (The CUDA code cannot use absl::Status: test
// binaries built here must run on a GPU machine without Abseil's shared
// libraries.) Cheap to copy when ok.
class [[nodiscard]] CudaStatus {
 public:
  CudaStatus() = default;  // ok
  static CudaStatus Error(std::string message) { return CudaStatus(std::move(message)); }
  bool ok() const { return ok_; }
  const std::string& message() const { return message_; }  // Empty when ok.

 private:
  explicit CudaStatus(std::string message) : ok_(false), message_(std::move(message)) {}
  bool ok_ = true;
  std::string message_;
};

// Number of usable CUDA devices; 0 when there is no driver or no device (any
// error from the runtime counts as "no device"). Thread-safe.
int DeviceCount();

// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for device `index`, or the error.
std::string DeviceDescription(int index);

// Dense bf16 tensor-core peak FLOP/s of a GPU by its name (cudaDeviceProp::
// name): H100 SXM / H200 989.4e12, H100 PCIe 756e12, H100 NVL 835e12, A100
// 312e12, L40S 362e12; 0 when the name is not known. The denominator of MFU.
double PeakBf16FlopsForName(const std::string& name);
// The same for device `index` (0 when it cannot be queried).
double PeakBf16Flops(int index);

// "<expr> failed at file:line: <cudaGetErrorString>" for a failed call.
std::string CudaErrorMessage(cudaError_t err, const char* expr, const char* file, int line);

}  // namespace llamapro::cuda

// Aborts with a message naming the call if a CUDA runtime call fails: for
// broken invariants only (device presence is checked with DeviceCount first).
#define LP_CUDA_CHECK(expr)                                                             \
  do {                                                                                  \
    cudaError_t lp_cuda_err_ = (expr);                                                  \
    if (lp_cuda_err_ != cudaSuccess) {                                                  \
      ::llamapro::cuda::internal::Fail(                                                 \
          ::llamapro::cuda::CudaErrorMessage(lp_cuda_err_, #expr, __FILE__, __LINE__)); \
    }                                                                                   \
  } while (false)

namespace llamapro::cuda::internal {
[[noreturn]] void Fail(const std::string& message);
}  // namespace llamapro::cuda::internal

#endif  // LLAMAPRO_KERNELS_CUDA_DEVICE_H_
