// Fast fp32 CPU implementations of the model's ops. Same semantics and layout
// as kernels/cpu/reference.h (the specification); tests compare the two.
//
// GEMMs run through OpenBLAS (which may use its own threads); everything else
// is single-threaded loops. No function allocates except where noted: callers
// pass scratch buffers sized by the matching *ScratchSize function, so a step
// loop can plan all memory up front. Thread-compatible.
#ifndef LLAMAPRO_KERNELS_CPU_OPS_H_
#define LLAMAPRO_KERNELS_CPU_OPS_H_

#include <cstdint>

namespace llamapro::cpu {

// y[N, out] = x[N, in] W[out, in]^T (+ b[out] if b != nullptr).
void Linear(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t in,
            int64_t out);

// y = x / sqrt(mean(x^2) + eps) * w, row by row. y may alias x.
void RmsNorm(const float* x, const float* w, float* y, int64_t n, int64_t c, float eps);

// Rotate-half rotary embedding in place; x is [B, T, heads, D], tables [T, D/2].
void ApplyRope(float* x, const float* cos_table, const float* sin_table, int64_t batch,
               int64_t seq_len, int64_t heads, int64_t head_dim);

// out = silu(gate) * up; out may alias gate or up.
void SiluMul(const float* gate, const float* up, float* out, int64_t n);

// y += x, elementwise.
void AddInPlace(float* y, const float* x, int64_t n);

// Floats of scratch Attention needs for a sequence length.
int64_t AttentionScratchSize(int64_t seq_len);

// Causal GQA attention (see ref::Attention). `scratch` holds
// AttentionScratchSize(seq_len) floats.
void Attention(const float* q, const float* k, const float* v, float* out, int64_t batch,
               int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window,
               float* scratch);

// out[r] = table[tokens[r]]. Token ids must be in range (callers validate).
void Embedding(const float* table, const int32_t* tokens, float* out, int64_t n, int64_t c);

// In place: row = log(softmax(row)); sums accumulate in double.
void LogSoftmax(float* x, int64_t n, int64_t v);

}  // namespace llamapro::cpu

#endif  // LLAMAPRO_KERNELS_CPU_OPS_H_
