// Token embedding lookup and its backward on the device.
//
// Layouts as kernels/cpu/reference.h: table [V, C], tokens [N], rows [N, C].
// Launchers enqueue on `stream` and return the launch status (an invalid
// argument is reported as cudaErrorInvalidValue before anything is enqueued);
// they never synchronize and never allocate. Pointers are device pointers.
// Token ids must be in [0, V): callers validate them (as on the CPU).
#ifndef LLAMAPRO_KERNELS_CUDA_EMBEDDING_CUH_
#define LLAMAPRO_KERNELS_CUDA_EMBEDDING_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

// out[r] = table[tokens[r]] for n rows of c bf16 values (a copy, exact).
cudaError_t EmbeddingForward(const uint16_t* table, const int32_t* tokens, uint16_t* out, int64_t n,
                             int64_t c, cudaStream_t stream);

// dtable[tokens[r]] += dx[r] for each of n rows (accumulated in fp32; dx is
// bf16). Deterministic: each column is summed by one thread in row order, so
// repeated tokens add up in the same order on every run.
cudaError_t EmbeddingBackward(const uint16_t* dx, const int32_t* tokens, float* dtable, int64_t n,
                              int64_t c, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_EMBEDDING_CUH_
