// Reference implementations of the model's ops: plain loops, templated on the
// scalar type so tests can run them in double. They are the specification the
// fast CPU path (kernels/cpu/ops.h) and the CUDA kernels are tested against;
// they favour clarity over speed.
//
// Layout conventions (dimension letters as in CONVENTIONS.md):
//   N = rows (B*T tokens), C hidden, H heads, Hkv key/value heads, D head size,
//   F FFN size, V vocabulary. Matrices are row-major. A Linear weight is
//   [out, in] as in PyTorch, and computes y = x W^T + b.
//
// All functions are pure (they write only their output arguments) and
// thread-compatible.
#ifndef LLAMAPRO_KERNELS_CPU_REFERENCE_H_
#define LLAMAPRO_KERNELS_CPU_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace llamapro::ref {

// y[N, out] = x[N, in] W[out, in]^T (+ b[out] if b != nullptr).
template <typename T>
void Linear(const T* x, const T* w, const T* b, T* y, int64_t n, int64_t in, int64_t out) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      T acc = b != nullptr ? b[o] : T(0);
      for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * w[o * in + i];
      y[r * out + o] = acc;
    }
  }
}

// y = x / sqrt(mean(x^2) + eps) * w, row by row over C.
template <typename T>
void RmsNorm(const T* x, const T* w, T* y, int64_t n, int64_t c, T eps) {
  for (int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * c;
    T sum_sq = 0;
    for (int64_t i = 0; i < c; ++i) sum_sq += xr[i] * xr[i];
    T inv_rms = T(1) / std::sqrt(sum_sq / T(c) + eps);
    for (int64_t i = 0; i < c; ++i) y[r * c + i] = xr[i] * inv_rms * w[i];
  }
}

// cos/sin tables [T, D/2] for positions 0..T-1: angle = pos * inv_freq[i].
template <typename T>
void RopeTables(const std::vector<T>& inv_freq, int64_t seq_len, std::vector<T>* cos_table,
                std::vector<T>* sin_table) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  cos_table->assign(seq_len * half, T(0));
  sin_table->assign(seq_len * half, T(0));
  for (int64_t t = 0; t < seq_len; ++t) {
    for (int64_t i = 0; i < half; ++i) {
      T angle = static_cast<T>(t) * inv_freq[i];
      (*cos_table)[t * half + i] = std::cos(angle);
      (*sin_table)[t * half + i] = std::sin(angle);
    }
  }
}

// Rotary embedding in Hugging Face's rotate-half convention, in place.
// x is [B, T, heads, D]; the pair rotated together is (i, i + D/2):
//   x'[i]       = x[i] cos - x[i + D/2] sin
//   x'[i + D/2] = x[i + D/2] cos + x[i] sin
template <typename T>
void ApplyRope(T* x, const T* cos_table, const T* sin_table, int64_t batch, int64_t seq_len,
               int64_t heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + ((b * seq_len + t) * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          T c = cos_table[t * half + i];
          T s = sin_table[t * half + i];
          T lo = v[i];
          T hi = v[i + half];
          v[i] = lo * c - hi * s;
          v[i + half] = hi * c + lo * s;
        }
      }
    }
  }
}

template <typename T>
T Silu(T x) {
  return x / (T(1) + std::exp(-x));
}

// out = silu(gate) * up, elementwise over n values.
template <typename T>
void SiluMul(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = Silu(gate[i]) * up[i];
}

// Causal self-attention with grouped key/value heads.
// q: [B, T, H, D], k and v: [B, T, Hkv, D], out: [B, T, H, D].
// Query head h reads key/value head h / (H / Hkv). Query t attends to keys
// j <= t, and, when window > 0, only to j > t - window (Mistral's sliding
// window). Scores are scaled by 1/sqrt(D).
template <typename T>
void Attention(const T* q, const T* k, const T* v, T* out, int64_t batch, int64_t seq_len,
               int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window) {
  const int64_t group = heads / kv_heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::vector<T> scores(seq_len);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t t = 0; t < seq_len; ++t) {
        const T* qv = q + ((b * seq_len + t) * heads + h) * head_dim;
        const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
        T max_score = -std::numeric_limits<T>::infinity();
        for (int64_t j = first; j <= t; ++j) {
          const T* kv = k + ((b * seq_len + j) * kv_heads + kvh) * head_dim;
          T dot = 0;
          for (int64_t d = 0; d < head_dim; ++d) dot += qv[d] * kv[d];
          scores[j] = dot * scale;
          max_score = std::max(max_score, scores[j]);
        }
        T denom = 0;
        for (int64_t j = first; j <= t; ++j) {
          scores[j] = std::exp(scores[j] - max_score);
          denom += scores[j];
        }
        T* o = out + ((b * seq_len + t) * heads + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) o[d] = 0;
        for (int64_t j = first; j <= t; ++j) {
          const T p = scores[j] / denom;
          const T* vv = v + ((b * seq_len + j) * kv_heads + kvh) * head_dim;
          for (int64_t d = 0; d < head_dim; ++d) o[d] += p * vv[d];
        }
      }
    }
  }
}

// out[r] = table[tokens[r]] for each of n tokens; rows of C values.
template <typename T>
void Embedding(const T* table, const int32_t* tokens, T* out, int64_t n, int64_t c) {
  for (int64_t r = 0; r < n; ++r) {
    std::copy(table + static_cast<int64_t>(tokens[r]) * c,
              table + static_cast<int64_t>(tokens[r] + 1) * c, out + r * c);
  }
}

// In place: row = log(softmax(row)), for n rows of V values.
template <typename T>
void LogSoftmax(T* x, int64_t n, int64_t v) {
  for (int64_t r = 0; r < n; ++r) {
    T* row = x + r * v;
    T max_value = *std::max_element(row, row + v);
    T sum = 0;
    for (int64_t i = 0; i < v; ++i) sum += std::exp(row[i] - max_value);
    T log_sum = max_value + std::log(sum);
    for (int64_t i = 0; i < v; ++i) row[i] -= log_sum;
  }
}

}  // namespace llamapro::ref

#endif  // LLAMAPRO_KERNELS_CPU_REFERENCE_H_
