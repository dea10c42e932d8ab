// Elementwise sum of two bf16 arrays on the device (residual connections and
// gradient sums): out = bf16(float(a) + float(b)).
//
// All arrays hold n bf16 values; out may alias a or b (each element is read
// before it is written, by the same thread). Enqueues on `stream` and returns
// the launch status (cudaErrorInvalidValue for n < 0, before anything is
// enqueued); never synchronizes. Device pointers.
#ifndef LLAMAPRO_KERNELS_CUDA_ADD_CUH_
#define LLAMAPRO_KERNELS_CUDA_ADD_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

cudaError_t Add(const uint16_t* a, const uint16_t* b, uint16_t* out, int64_t n,
                cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_ADD_CUH_
