// CUDA device discovery and error checking. Compiled only when CUDA is
// enabled (LLAMAPRO_HAVE_CUDA).
#ifndef LLAMAPRO_KERNELS_CUDA_DEVICE_H_
#define LLAMAPRO_KERNELS_CUDA_DEVICE_H_

#include <cuda_runtime_api.h>

#include <string>

namespace llamapro::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (any
// error from the runtime counts as "no device"). Thread-safe.
int DeviceCount();

// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for device `index`, or the error.
std::string DeviceDescription(int index);

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
