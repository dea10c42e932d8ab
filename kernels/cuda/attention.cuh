// Causal self-attention with grouped key/value heads (GQA) and an optional
// sliding window, forward and backward, as tiled flash-style kernels: bf16
// storage, fp32 math, memory linear in the sequence length (no T x T matrix
// is ever stored; the backward recomputes probabilities from the saved
// log-sum-exp). Semantics of ref::AttentionForward / ref::AttentionBackward
// (kernels/cpu/reference_backward.h) and cpu::AttentionForward.
//
// Layouts: q, out, dout, dq: [B, T, H, D] bf16; k, v, dk, dv: [B, T, Hkv, D]
// bf16; lse: [B, H, T] fp32. Query head h reads key/value head h / (H / Hkv);
// query t attends to keys j <= t and, when window > 0, only to j > t - window;
// scores are scaled by 1/sqrt(D).
//
// Limits: D even and at most kMaxAttentionHeadDim; H a multiple of Hkv; every
// pointer 4-byte aligned (bf16 pairs are read as 32-bit words). Violations
// return cudaErrorInvalidValue before anything is enqueued.
//
// Launchers enqueue on `stream` and return the launch status; they never
// synchronize and never allocate. Device pointers. Deterministic: every
// output element is computed by one thread in a fixed order (no atomics).
#ifndef LLAMAPRO_KERNELS_CUDA_ATTENTION_CUH_
#define LLAMAPRO_KERNELS_CUDA_ATTENTION_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace llamapro::cuda {

inline constexpr int64_t kMaxAttentionHeadDim = 128;

// out (overwritten) and lse[b, h, t] = log sum_j exp(scale q_t . k_j) over
// the attended keys (overwritten).
cudaError_t AttentionForward(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* out,
                             float* lse, int64_t batch, int64_t seq_len, int64_t heads,
                             int64_t kv_heads, int64_t head_dim, int64_t window,
                             cudaStream_t stream);

// Floats of scratch AttentionBackward needs (delta = dout . out per query).
int64_t AttentionBackwardScratchSize(int64_t batch, int64_t seq_len, int64_t heads);

// dq, dk, dv (all overwritten; dk and dv summed over the query heads sharing
// a key/value head) from dout, given the forward's q, k, v, out and lse.
// `scratch` holds AttentionBackwardScratchSize(batch, seq_len, heads) floats.
cudaError_t AttentionBackward(const uint16_t* q, const uint16_t* k, const uint16_t* v,
                              const uint16_t* out, const float* lse, const uint16_t* dout,
                              uint16_t* dq, uint16_t* dk, uint16_t* dv, int64_t batch,
                              int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim,
                              int64_t window, float* scratch, cudaStream_t stream);

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_ATTENTION_CUH_
