#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include "base/multiversion.h"
#include "kernels/cpu/blas.h"
#include "kernels/cpu/fast_math.h"

namespace llamapro::cpu {
namespace {

// One row of RMSNorm; returns 1 / rms. y may alias x. RmsNorm and
// RmsNormForward share it, so their outputs are bit-identical.
[[gnu::always_inline]] inline float RmsNormRow(const float* x, const float* w, float* y, int64_t c,
                                               float eps) {
  float sum_sq = 0.0f;
  for (int64_t i = 0; i < c; ++i) sum_sq += x[i] * x[i];
  const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(c) + eps);
  for (int64_t i = 0; i < c; ++i) y[i] = x[i] * inv_rms * w[i];
  return inv_rms;
}

// Query rows per block of the attention kernels: a block only reads the keys
// up to its last row (causal), so about half the T x T work is skipped.
constexpr int64_t kQueryBlock = 64;

// Attention and AttentionForward share this code, so their outputs are
// bit-identical; lse == nullptr skips storing the log-sum-exp.
LP_MULTIVERSION void AttentionImpl(const float* q, const float* k, const float* v, float* out,
                                   float* lse, int64_t batch, int64_t seq_len, int64_t heads,
                                   int64_t kv_heads, int64_t head_dim, int64_t window,
                                   float* scratch) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const auto d_len = static_cast<int64_t>(head_dim);
  const auto q_stride = static_cast<int64_t>(heads * head_dim);
  const auto kv_stride = static_cast<int64_t>(kv_heads * head_dim);
  float* scores = scratch;  // [block rows, keys]
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      const float* qh = q + b * seq_len * heads * head_dim + h * head_dim;
      const float* kh = k + b * seq_len * kv_heads * head_dim + kvh * head_dim;
      const float* vh = v + b * seq_len * kv_heads * head_dim + kvh * head_dim;
      float* oh = out + b * seq_len * heads * head_dim + h * head_dim;
      for (int64_t i0 = 0; i0 < seq_len; i0 += kQueryBlock) {
        const int64_t i1 = std::min(seq_len, i0 + kQueryBlock);
        const int64_t k0 = FirstKey(i0, window);
        const int64_t keys = i1 - k0;
        const auto rows = static_cast<int64_t>(i1 - i0);
        const auto ld = static_cast<int64_t>(keys);
        Sgemm(false, true, rows, ld, d_len, scale, qh + i0 * q_stride, q_stride,
              kh + k0 * kv_stride, kv_stride, 0.0f, scores, ld);
        for (int64_t t = i0; t < i1; ++t) {
          float* row = scores + (t - i0) * keys;
          const int64_t first = FirstKey(t, window) - k0;
          const int64_t last = t - k0;  // Inclusive.
          const float max_score = Max(row + first, last - first + 1);
          float denom = 0.0f;
#pragma omp simd reduction(+ : denom)
          for (int64_t j = first; j <= last; ++j) {
            row[j] = FastExp(row[j] - max_score);
            denom += row[j];
          }
          if (lse != nullptr) lse[(b * heads + h) * seq_len + t] = max_score + std::log(denom);
          const float inv = 1.0f / denom;
          std::fill(row, row + first, 0.0f);
#pragma omp simd
          for (int64_t j = first; j <= last; ++j) row[j] *= inv;
          std::fill(row + last + 1, row + keys, 0.0f);
        }
        Sgemm(false, false, rows, d_len, ld, 1.0f, scores, ld, vh + k0 * kv_stride, kv_stride, 0.0f,
              oh + i0 * q_stride, q_stride);
      }
    }
  }
}

}  // namespace

void SetNumThreads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  SetBlasThreads(threads);
}

LP_MULTIVERSION void Linear(const float* x, const float* w, const float* b, float* y, int64_t n,
                            int64_t in, int64_t out) {
  Sgemm(false, true, static_cast<int64_t>(n), static_cast<int64_t>(out), static_cast<int64_t>(in),
        1.0f, x, static_cast<int64_t>(in), w, static_cast<int64_t>(in), 0.0f, y,
        static_cast<int64_t>(out));
  if (b != nullptr) {
    for (int64_t r = 0; r < n; ++r) {
      float* yr = y + r * out;
      for (int64_t o = 0; o < out; ++o) yr[o] += b[o];
    }
  }
}

LP_MULTIVERSION void RmsNorm(const float* x, const float* w, float* y, int64_t n, int64_t c,
                             float eps) {
  for (int64_t r = 0; r < n; ++r) RmsNormRow(x + r * c, w, y + r * c, c, eps);
}

LP_MULTIVERSION void RmsNormForward(const float* x, const float* w, float* y, float* inv_rms,
                                    int64_t n, int64_t c, float eps) {
  for (int64_t r = 0; r < n; ++r) inv_rms[r] = RmsNormRow(x + r * c, w, y + r * c, c, eps);
}

LP_MULTIVERSION void ApplyRope(float* x, const float* cos_table, const float* sin_table,
                               int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const float* c = cos_table + t * half;
      const float* s = sin_table + t * half;
      for (int64_t h = 0; h < heads; ++h) {
        float* v = x + ((b * seq_len + t) * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float lo = v[i];
          const float hi = v[i + half];
          v[i] = lo * c[i] - hi * s[i];
          v[i + half] = hi * c[i] + lo * s[i];
        }
      }
    }
  }
}

LP_MULTIVERSION void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float sigmoid = 1.0f / (1.0f + FastExp(-g));
    out[i] = g * sigmoid * up[i];
  }
}

LP_MULTIVERSION void AddInPlace(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

int64_t AttentionScratchSize(int64_t seq_len) { return kQueryBlock * seq_len; }

void Attention(const float* q, const float* k, const float* v, float* out, int64_t batch,
               int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window,
               float* scratch) {
  AttentionImpl(q, k, v, out, nullptr, batch, seq_len, heads, kv_heads, head_dim, window, scratch);
}

void AttentionForward(const float* q, const float* k, const float* v, float* out, float* lse,
                      int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                      int64_t head_dim, int64_t window, float* scratch) {
  AttentionImpl(q, k, v, out, lse, batch, seq_len, heads, kv_heads, head_dim, window, scratch);
}

void Embedding(const float* table, const int32_t* tokens, float* out, int64_t n, int64_t c) {
  for (int64_t r = 0; r < n; ++r) {
    std::memcpy(out + r * c, table + static_cast<int64_t>(tokens[r]) * c, c * sizeof(float));
  }
}

LP_MULTIVERSION void LogSoftmax(float* x, int64_t n, int64_t v) {
  for (int64_t r = 0; r < n; ++r) {
    float* row = x + r * v;
    const float max_value = *std::max_element(row, row + v);
    double sum = 0.0;
    for (int64_t i = 0; i < v; ++i) sum += std::exp(static_cast<double>(row[i] - max_value));
    const float log_sum = max_value + static_cast<float>(std::log(sum));
    for (int64_t i = 0; i < v; ++i) row[i] -= log_sum;
  }
}

}  // namespace llamapro::cpu
