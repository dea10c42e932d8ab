// Cross-entropy with a loss mask over a chunk of bf16 logits, fused with its
// gradient, which overwrites the logits in place (as llm.c's fused
// classifier): the lm_head GEMM writes a chunk of rows of logits, this turns
// them into dlogits, and the lm_head backward GEMMs read them. Callers walk
// the [N, V] logits in chunks of rows so they never exist at once.
//
// Semantics of ref::CrossEntropy (kernels/cpu/reference_backward.h) with fp32
// math over the bf16 logits: for each row r with mask[r] != 0 (mask ==
// nullptr: every row), loss[r] = logsumexp(logits_r) - logits_r[targets[r]]
// and dlogits_r = scale * (softmax(logits_r) - onehot(targets[r])); rows with
// mask[r] == 0 get loss[r] = 0 and dlogits_r = 0, and their targets are never
// read. Targets of masked rows must be in [0, V) (callers validate).
//
// logits: [n, V] bf16 (in: logits, out: dlogits); targets: [n] int32; mask:
// [n] uint8 or nullptr; loss: [n] fp32 (per-row losses; the caller sums them).
// Enqueues on `stream`, returns the launch status (cudaErrorInvalidValue for
// bad sizes, before anything is enqueued); never synchronizes. Device
// pointers.
#ifndef LLAMAPRO_KERNELS_CUDA_CROSS_ENTROPY_CUH_
#define LLAMAPRO_KERNELS_CUDA_CROSS_ENTROPY_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

cudaError_t CrossEntropyForwardBackward(uint16_t* logits, const int32_t* targets,
                                        const uint8_t* mask, float scale, float* loss, int64_t n,
                                        int64_t v, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_CROSS_ENTROPY_CUH_
