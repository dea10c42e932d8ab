// Backward passes of the fast fp32 CPU ops (kernels/cpu/ops.h, training
// section). The forward variants that save state (RmsNormForward,
// AttentionForward) live in ops.cc beside the inference forwards whose code
// they share. References: kernels/cpu/reference_backward.h.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "base/check.h"
#include "base/multiversion.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

namespace llamapro::cpu {
namespace {

// For rows of logits, in place: returns the summed loss
// -log softmax(row)[target] over the rows in the loss (mask == nullptr or
// mask[r] != 0) and, if `gradient`, replaces each such row by
// scale * (softmax - onehot) and every other row by zeros. The log-sum-exp is
// accumulated in double.
LP_MULTIVERSION double CrossEntropyRows(float* logits, const int32_t* targets, const uint8_t* mask,
                                        int64_t rows, int64_t v, float scale, bool gradient) {
  double loss = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = logits + r * v;
    if (mask != nullptr && mask[r] == 0) {
      if (gradient) std::fill(row, row + v, 0.0f);
      continue;
    }
    const int64_t target = targets[r];
    LP_CHECK(target >= 0 && target < v, "cross-entropy target out of vocabulary range");
    const float max_value = Max(row, v);
    const float target_logit = row[target];
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < v; ++i) {
      const float e = FastExp(row[i] - max_value);
      row[i] = e;
      sum += e;
    }
    loss += static_cast<double>(max_value) + std::log(sum) - static_cast<double>(target_logit);
    if (gradient) {
      const auto factor = static_cast<float>(static_cast<double>(scale) / sum);
#pragma omp simd
      for (int64_t i = 0; i < v; ++i) row[i] *= factor;
      row[target] -= scale;
    }
  }
  return loss;
}

// The SiluMulBackward loop for one choice of outputs, so each variant
// vectorises without per-element branches.
template <bool kGate, bool kUp>
[[gnu::always_inline]] inline void SiluMulBackwardLoop(const float* gate, const float* up,
                                                       const float* dout, float* dgate, float* dup,
                                                       int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float u = up[i];
    const float d = dout[i];
    const float sigmoid = 1.0f / (1.0f + FastExp(-g));
    if constexpr (kGate) dgate[i] = d * u * sigmoid * (1.0f + g * (1.0f - sigmoid));
    if constexpr (kUp) dup[i] = d * g * sigmoid;
  }
}

}  // namespace

LP_MULTIVERSION void RmsNormBackward(const float* dy, const float* x, const float* w,
                                     const float* inv_rms, float* dx, float* dw, int64_t n,
                                     int64_t c) {
  const float inv_c = 1.0f / static_cast<float>(c);
  for (int64_t r = 0; r < n; ++r) {
    const float* dyr = dy + r * c;
    const float* xr = x + r * c;
    const float s = inv_rms[r];
    if (dx != nullptr) {
      const float coef = s * s * s * inv_c * Dot3(dyr, w, xr, c);
      float* dxr = dx + r * c;
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) dxr[i] = s * w[i] * dyr[i] - coef * xr[i];
    }
    if (dw != nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) dw[i] += s * dyr[i] * xr[i];
    }
  }
}

LP_MULTIVERSION void LinearBackward(const float* dy, const float* x, const float* w, float* dx,
                                    float* dw, float* db, int64_t n, int64_t in, int64_t out) {
  if (n <= 0) return;
  if (dx != nullptr) {
    Sgemm(false, false, n, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in);
  }
  if (dw != nullptr) {
    Sgemm(true, false, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in);
  }
  if (db != nullptr) {
    for (int64_t r = 0; r < n; ++r) {
      const float* dyr = dy + r * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) db[o] += dyr[o];
    }
  }
}

LP_MULTIVERSION void ApplyRopeBackward(float* dx, const float* cos_table, const float* sin_table,
                                       int64_t batch, int64_t seq_len, int64_t heads,
                                       int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const float* c = cos_table + t * half;
      const float* s = sin_table + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        float* g = dx + ((b * seq_len + t) * heads + h) * head_dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float lo = g[i];
          const float hi = g[i + half];
          g[i] = lo * c[i] + hi * s[i];
          g[i + half] = hi * c[i] - lo * s[i];
        }
      }
    }
  }
}

LP_MULTIVERSION void SiluMulBackward(const float* gate, const float* up, const float* dout,
                                     float* dgate, float* dup, int64_t n) {
  if (dgate != nullptr && dup != nullptr) {
    SiluMulBackwardLoop<true, true>(gate, up, dout, dgate, dup, n);
  } else if (dgate != nullptr) {
    SiluMulBackwardLoop<true, false>(gate, up, dout, dgate, dup, n);
  } else if (dup != nullptr) {
    SiluMulBackwardLoop<false, true>(gate, up, dout, dgate, dup, n);
  }
}

// Query rows per block (as in the forward): a block reads keys up to its last row only.
constexpr int64_t kQueryBlock = 64;

int64_t AttentionBackwardScratchSize(int64_t seq_len) {
  return 2 * kQueryBlock * seq_len + kQueryBlock;
}

LP_MULTIVERSION void AttentionBackward(const float* q, const float* k, const float* v,
                                       const float* out, const float* lse, const float* dout,
                                       float* dq, float* dk, float* dv, int64_t batch,
                                       int64_t seq_len, int64_t heads, int64_t kv_heads,
                                       int64_t head_dim, int64_t window, float* scratch) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t d_len = head_dim;
  const int64_t q_stride = heads * head_dim;
  const int64_t kv_stride = kv_heads * head_dim;
  // Several query heads and query blocks add into each key/value row, so dk
  // and dv accumulate (sgemm beta = 1) from zero.
  const int64_t kv_size = batch * seq_len * kv_heads * head_dim;
  std::fill(dk, dk + kv_size, 0.0f);
  std::fill(dv, dv + kv_size, 0.0f);
  float* probs = scratch;                              // P [block rows, keys]
  float* dscores = scratch + kQueryBlock * seq_len;    // dP, then dS
  float* delta = scratch + 2 * kQueryBlock * seq_len;  // rowsum(dO * O) [block rows]
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      const int64_t q_offset = b * seq_len * heads * head_dim + h * head_dim;
      const int64_t kv_offset = b * seq_len * kv_heads * head_dim + kvh * head_dim;
      const float* lse_h = lse + (b * heads + h) * seq_len;
      for (int64_t i0 = 0; i0 < seq_len; i0 += kQueryBlock) {
        const int64_t i1 = std::min(seq_len, i0 + kQueryBlock);
        const int64_t k0 = FirstKey(i0, window);
        const int64_t keys = i1 - k0;
        const int64_t rows = i1 - i0;
        const int64_t ld = keys;
        const float* qb = q + q_offset + i0 * q_stride;
        const float* ob = out + q_offset + i0 * q_stride;
        const float* dob = dout + q_offset + i0 * q_stride;
        float* dqb = dq + q_offset + i0 * q_stride;
        const float* kb = k + kv_offset + k0 * kv_stride;
        const float* vb = v + kv_offset + k0 * kv_stride;
        float* dkb = dk + kv_offset + k0 * kv_stride;
        float* dvb = dv + kv_offset + k0 * kv_stride;
        // Recompute P = exp(scale Q K^T - lse) on the attended keys, 0 elsewhere.
        Sgemm(false, true, rows, ld, d_len, scale, qb, q_stride, kb, kv_stride, 0.0f, probs, ld);
        for (int64_t t = i0; t < i1; ++t) {
          float* row = probs + (t - i0) * keys;
          const int64_t first = FirstKey(t, window) - k0;
          const int64_t last = t - k0;
          const float lse_t = lse_h[t];
          std::fill(row, row + first, 0.0f);
#pragma omp simd
          for (int64_t j = first; j <= last; ++j) row[j] = FastExp(row[j] - lse_t);
          std::fill(row + last + 1, row + keys, 0.0f);
          delta[t - i0] = Dot(dob + (t - i0) * q_stride, ob + (t - i0) * q_stride, head_dim);
        }
        // dV += P^T dO.
        Sgemm(true, false, ld, d_len, rows, 1.0f, probs, ld, dob, q_stride, 1.0f, dvb, kv_stride);
        // dP = dO V^T, then dS = P (dP - delta) in place.
        Sgemm(false, true, rows, ld, d_len, 1.0f, dob, q_stride, vb, kv_stride, 0.0f, dscores, ld);
        for (int64_t t = i0; t < i1; ++t) {
          const float* p = probs + (t - i0) * keys;
          float* ds = dscores + (t - i0) * keys;
          const int64_t first = FirstKey(t, window) - k0;
          const int64_t last = t - k0;
          const float delta_t = delta[t - i0];
          std::fill(ds, ds + first, 0.0f);
#pragma omp simd
          for (int64_t j = first; j <= last; ++j) ds[j] = p[j] * (ds[j] - delta_t);
          std::fill(ds + last + 1, ds + keys, 0.0f);
        }
        // dQ = scale dS K (this head's rows: overwrite), dK += scale dS^T Q.
        Sgemm(false, false, rows, d_len, ld, scale, dscores, ld, kb, kv_stride, 0.0f, dqb,
              q_stride);
        Sgemm(true, false, ld, d_len, rows, scale, dscores, ld, qb, q_stride, 1.0f, dkb, kv_stride);
      }
    }
  }
}

LP_MULTIVERSION void EmbeddingBackward(const float* dx, const int32_t* tokens, float* dtable,
                                       int64_t n, int64_t c) {
  for (int64_t r = 0; r < n; ++r) {
    float* row = dtable + static_cast<int64_t>(tokens[r]) * c;
    const float* dxr = dx + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) row[i] += dxr[i];
  }
}

int64_t LmHeadChunkRows(int64_t v) {
  // Up to 256 rows (larger GEMMs run faster), within 8 MB of logits.
  return std::clamp<int64_t>((int64_t{8} << 20) / (4 * std::max<int64_t>(v, 1)), 16, 256);
}

int64_t LmHeadScratchSize(int64_t v) { return LmHeadChunkRows(v) * v; }

double LmHeadCrossEntropy(const float* x, const float* w, const int32_t* targets,
                          const uint8_t* mask, float scale, float* dx, float* dw, int64_t n,
                          int64_t c, int64_t v, float* scratch) {
  const bool gradient = dx != nullptr || dw != nullptr;
  double loss = 0.0;
  int64_t r = 0;
  while (r < n) {
    if (mask != nullptr && mask[r] == 0) {
      if (dx != nullptr) std::memset(dx + r * c, 0, c * sizeof(float));
      ++r;
      continue;
    }
    // A chunk starts and ends at rows in the loss, so runs of rows outside it
    // (an SFT prompt) cost nothing at chunk edges; such rows inside a chunk
    // get zero dlogits (dx rows of zeros) rather than splitting the chunk into
    // small, slow GEMMs.
    int64_t rows = std::min(LmHeadChunkRows(v), n - r);
    while (mask != nullptr && mask[r + rows - 1] == 0) --rows;
    const float* xr = x + r * c;
    float* logits = scratch;  // [rows, V]: logits, then dlogits
    Sgemm(false, true, rows, v, c, 1.0f, xr, c, w, c, 0.0f, logits, v);
    loss += CrossEntropyRows(logits, targets + r, mask == nullptr ? nullptr : mask + r, rows, v,
                             scale, gradient);
    if (dx != nullptr) {
      Sgemm(false, false, rows, c, v, 1.0f, logits, v, w, c, 0.0f, dx + r * c, c);
    }
    if (dw != nullptr) {
      Sgemm(true, false, v, c, rows, 1.0f, logits, v, xr, c, 1.0f, dw, c);
    }
    r += rows;
  }
  return loss;
}

}  // namespace llamapro::cpu
