#include "kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

namespace llamapro::cpu {
namespace {

// One row of RMSNorm; returns 1 / rms. y may alias x. RmsNorm and
// RmsNormForward share it, so their outputs are bit-identical.
float RmsNormRow(const float* x, const float* w, float* y, int64_t c, float eps) {
  float sum_sq = 0.0f;
  for (int64_t i = 0; i < c; ++i) sum_sq += x[i] * x[i];
  const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(c) + eps);
  for (int64_t i = 0; i < c; ++i) y[i] = x[i] * inv_rms * w[i];
  return inv_rms;
}

// Attention and AttentionForward share this code, so their outputs are
// bit-identical; lse == nullptr skips storing the log-sum-exp.
void AttentionImpl(const float* q, const float* k, const float* v, float* out, float* lse,
                   int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                   int64_t head_dim, int64_t window, float* scratch) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const auto t_len = static_cast<blasint>(seq_len);
  const auto d_len = static_cast<blasint>(head_dim);
  const auto q_stride = static_cast<blasint>(heads * head_dim);
  const auto kv_stride = static_cast<blasint>(kv_heads * head_dim);
  float* scores = scratch;  // [T, T]
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      const float* qh = q + b * seq_len * heads * head_dim + h * head_dim;
      const float* kh = k + b * seq_len * kv_heads * head_dim + kvh * head_dim;
      const float* vh = v + b * seq_len * kv_heads * head_dim + kvh * head_dim;
      float* oh = out + b * seq_len * heads * head_dim + h * head_dim;
      // scores = scale * Q K^T (the upper triangle is computed and then ignored).
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t_len, t_len, d_len, scale, qh, q_stride,
                  kh, kv_stride, 0.0f, scores, t_len);
      for (int64_t t = 0; t < seq_len; ++t) {
        float* row = scores + t * seq_len;
        const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
        float max_score = -std::numeric_limits<float>::infinity();
        for (int64_t j = first; j <= t; ++j) max_score = std::max(max_score, row[j]);
        float denom = 0.0f;
        for (int64_t j = first; j <= t; ++j) {
          row[j] = std::exp(row[j] - max_score);
          denom += row[j];
        }
        if (lse != nullptr) lse[(b * heads + h) * seq_len + t] = max_score + std::log(denom);
        const float inv = 1.0f / denom;
        for (int64_t j = 0; j < first; ++j) row[j] = 0.0f;
        for (int64_t j = first; j <= t; ++j) row[j] *= inv;
        for (int64_t j = t + 1; j < seq_len; ++j) row[j] = 0.0f;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t_len, d_len, t_len, 1.0f, scores,
                  t_len, vh, kv_stride, 0.0f, oh, q_stride);
    }
  }
}

}  // namespace

void SetNumThreads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  openblas_set_num_threads(std::max(1, threads));
}

void Linear(const float* x, const float* w, const float* b, float* y, int64_t n, int64_t in,
            int64_t out) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n),
              static_cast<blasint>(out), static_cast<blasint>(in), 1.0f, x,
              static_cast<blasint>(in), w, static_cast<blasint>(in), 0.0f, y,
              static_cast<blasint>(out));
  if (b != nullptr) {
    for (int64_t r = 0; r < n; ++r) {
      float* yr = y + r * out;
      for (int64_t o = 0; o < out; ++o) yr[o] += b[o];
    }
  }
}

void RmsNorm(const float* x, const float* w, float* y, int64_t n, int64_t c, float eps) {
  for (int64_t r = 0; r < n; ++r) RmsNormRow(x + r * c, w, y + r * c, c, eps);
}

void RmsNormForward(const float* x, const float* w, float* y, float* inv_rms, int64_t n, int64_t c,
                    float eps) {
  for (int64_t r = 0; r < n; ++r) inv_rms[r] = RmsNormRow(x + r * c, w, y + r * c, c, eps);
}

void ApplyRope(float* x, const float* cos_table, const float* sin_table, int64_t batch,
               int64_t seq_len, int64_t heads, int64_t head_dim) {
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

void SiluMul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

int64_t AttentionScratchSize(int64_t seq_len) { return seq_len * seq_len; }

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

void LogSoftmax(float* x, int64_t n, int64_t v) {
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
