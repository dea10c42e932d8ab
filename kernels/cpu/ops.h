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

// Threads the GEMMs may use (0: all cores). Call before any op, not
// concurrently with one.
void SetNumThreads(int threads);

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

// --- Training: forward variants that save what the backward needs, and the
// backward of every op. Conventions: a gradient output named d* is
// overwritten unless documented "accumulated (+=)"; weight gradients are
// always accumulated, so micro-batches add up; nullptr skips an output that
// is not needed (a frozen weight, the input of the lowest trainable block).
// References with the same semantics, templated for double, are in
// kernels/cpu/reference_backward.h.

// RMSNorm forward that also stores inv_rms[r] = 1/sqrt(mean(x_r^2) + eps).
void RmsNormForward(const float* x, const float* w, float* y, float* inv_rms, int64_t n, int64_t c,
                    float eps);
// dx = d/dx of RMSNorm (overwritten; may be nullptr), dw += sum over rows (may
// be nullptr). dx must not alias x or dy.
void RmsNormBackward(const float* dy, const float* x, const float* w, const float* inv_rms,
                     float* dx, float* dw, int64_t n, int64_t c);

// dx[N, in] = dy W (overwritten; nullptr skips), dw[out, in] += dy^T x
// (nullptr skips), db[out] += column sums of dy (nullptr skips).
void LinearBackward(const float* dy, const float* x, const float* w, float* dx, float* dw,
                    float* db, int64_t n, int64_t in, int64_t out);

// The transpose of ApplyRope (rotation by -angle), in place on a gradient.
void ApplyRopeBackward(float* dx, const float* cos_table, const float* sin_table, int64_t batch,
                       int64_t seq_len, int64_t heads, int64_t head_dim);

// dgate = dout * up * silu'(gate), dup = dout * silu(gate) (both overwritten;
// they may alias gate and up respectively: each element is read before it is
// written).
void SiluMulBackward(const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup, int64_t n);

// Attention forward that also stores lse[B, H, T], the log-sum-exp of each
// query's scaled scores, so the backward can recompute probabilities instead
// of storing the T x T matrix (memory linear in T). Same scratch as Attention.
void AttentionForward(const float* q, const float* k, const float* v, float* out, float* lse,
                      int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                      int64_t head_dim, int64_t window, float* scratch);
// Floats of scratch AttentionBackward needs.
int64_t AttentionBackwardScratchSize(int64_t seq_len);
// dq (overwritten), dk and dv (overwritten; summed over the query heads of
// each key/value head) from dout, given the forward's q, k, v, out and lse.
void AttentionBackward(const float* q, const float* k, const float* v, const float* out,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv,
                       int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t window, float* scratch);

// dtable[tokens[r]] += dx[r] for each row (accumulated).
void EmbeddingBackward(const float* dx, const int32_t* tokens, float* dtable, int64_t n, int64_t c);

// Rows of logits LmHeadCrossEntropy processes at once for a vocabulary of v
// (at most 256, within 8 MB), and its scratch: LmHeadScratchSize(v) floats.
int64_t LmHeadChunkRows(int64_t v);
int64_t LmHeadScratchSize(int64_t v);
// Fused lm_head + cross-entropy with a loss mask, chunked over rows so the
// [N, V] logits never exist at once. For each row r with mask[r] != 0:
// loss_r = -log softmax(x_r W^T)[targets[r]]. Returns the sum of loss_r (in
// double). If dx != nullptr: dx[r] = scale * (softmax - onehot) W for masked
// rows, 0 for the others (overwritten). If dw != nullptr: dw += scale *
// sum_r (softmax - onehot)^T x_r (accumulated). mask == nullptr means all rows.
double LmHeadCrossEntropy(const float* x, const float* w, const int32_t* targets,
                          const uint8_t* mask, float scale, float* dx, float* dw, int64_t n,
                          int64_t c, int64_t v, float* scratch);

}  // namespace llamapro::cpu

#endif  // LLAMAPRO_KERNELS_CPU_OPS_H_
