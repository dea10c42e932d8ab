// Backward passes of the fast fp32 CPU ops (kernels/cpu/ops.h, training
// section). The forward variants that save state (RmsNormForward,
// AttentionForward) live in ops.cc beside the inference forwards whose code
// they share. References: kernels/cpu/reference_backward.h.
#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "base/check.h"
#include "kernels/cpu/ops.h"

namespace llamapro::cpu {
namespace {

blasint Blas(int64_t value) { return static_cast<blasint>(value); }

// exp(x) within 1.4 ulp (Cephes' expf polynomial), with x clamped to
// [-87, 88] so the result stays a normal float. Unlike glibc's expf it is
// plain arithmetic, so `omp simd` loops over it vectorize; exp dominates the
// non-GEMM time of the attention and cross-entropy backward passes.
inline float FastExp(float x) {
  // Two unconditional selects (not a nested ?:, whose conditional second
  // comparison blocks if-conversion under -ftrapping-math).
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // n = round(x / ln 2): adding 1.5 * 2^23 leaves the integer in the low bits.
  constexpr float kRoundShift = 12582912.0f;
  const float n = (x * 1.44269504088896341f + kRoundShift) - kRoundShift;
  // r = x - n ln 2, with ln 2 split in two: 0.693359375 has few mantissa bits,
  // so n times it is exact.
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const auto exponent = static_cast<int32_t>(n) + 127;
  return p * std::bit_cast<float>(exponent << 23);
}

// sum_i a_i b_i c_i; the vectorised summation order is fixed at compile time,
// so results are deterministic.
float Dot3(const float* a, const float* b, const float* c, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i] * c[i];
  return sum;
}

float Dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// max_i a_i for n >= 1. Eight explicit lanes rather than an `omp simd`
// max-reduction, which GCC 12 keeps in memory (a store-forwarding stall per
// vector).
float Max(const float* a, int64_t n) {
  constexpr int kLanes = 8;
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, a[0]);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) lanes[l] = a[i + l] > lanes[l] ? a[i + l] : lanes[l];
  }
  float max_value = a[0];
  for (; i < n; ++i) max_value = a[i] > max_value ? a[i] : max_value;
  for (float lane : lanes) max_value = lane > max_value ? lane : max_value;
  return max_value;
}

// First key that query t attends to (ref::Attention: (t - window, t]).
int64_t FirstKey(int64_t t, int64_t window) {
  return window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
}

// For rows of logits, in place: returns the summed loss
// -log softmax(row)[target] over the rows in the loss (mask == nullptr or
// mask[r] != 0) and, if `gradient`, replaces each such row by
// scale * (softmax - onehot) and every other row by zeros. The log-sum-exp is
// accumulated in double.
double CrossEntropyRows(float* logits, const int32_t* targets, const uint8_t* mask, int64_t rows,
                        int64_t v, float scale, bool gradient) {
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
void SiluMulBackwardLoop(const float* gate, const float* up, const float* dout, float* dgate,
                         float* dup, int64_t n) {
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

void RmsNormBackward(const float* dy, const float* x, const float* w, const float* inv_rms,
                     float* dx, float* dw, int64_t n, int64_t c) {
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

void LinearBackward(const float* dy, const float* x, const float* w, float* dx, float* dw,
                    float* db, int64_t n, int64_t in, int64_t out) {
  if (n <= 0) return;
  if (dx != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Blas(n), Blas(in), Blas(out), 1.0f, dy,
                Blas(out), w, Blas(in), 0.0f, dx, Blas(in));
  }
  if (dw != nullptr) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Blas(out), Blas(in), Blas(n), 1.0f, dy,
                Blas(out), x, Blas(in), 1.0f, dw, Blas(in));
  }
  if (db != nullptr) {
    for (int64_t r = 0; r < n; ++r) {
      const float* dyr = dy + r * out;
#pragma omp simd
      for (int64_t o = 0; o < out; ++o) db[o] += dyr[o];
    }
  }
}

void ApplyRopeBackward(float* dx, const float* cos_table, const float* sin_table, int64_t batch,
                       int64_t seq_len, int64_t heads, int64_t head_dim) {
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

void SiluMulBackward(const float* gate, const float* up, const float* dout, float* dgate,
                     float* dup, int64_t n) {
  if (dgate != nullptr && dup != nullptr) {
    SiluMulBackwardLoop<true, true>(gate, up, dout, dgate, dup, n);
  } else if (dgate != nullptr) {
    SiluMulBackwardLoop<true, false>(gate, up, dout, dgate, dup, n);
  } else if (dup != nullptr) {
    SiluMulBackwardLoop<false, true>(gate, up, dout, dgate, dup, n);
  }
}

int64_t AttentionBackwardScratchSize(int64_t seq_len) { return 2 * seq_len * seq_len + seq_len; }

void AttentionBackward(const float* q, const float* k, const float* v, const float* out,
                       const float* lse, const float* dout, float* dq, float* dk, float* dv,
                       int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                       int64_t head_dim, int64_t window, float* scratch) {
  const int64_t group = heads / kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const blasint t_len = Blas(seq_len);
  const blasint d_len = Blas(head_dim);
  const blasint q_stride = Blas(heads * head_dim);
  const blasint kv_stride = Blas(kv_heads * head_dim);
  // Several query heads add into each key/value head, so dk and dv accumulate
  // (sgemm beta = 1) from zero.
  const int64_t kv_size = batch * seq_len * kv_heads * head_dim;
  std::fill(dk, dk + kv_size, 0.0f);
  std::fill(dv, dv + kv_size, 0.0f);
  float* probs = scratch;                          // P [T, T]
  float* dscores = scratch + seq_len * seq_len;    // dP, then dS [T, T]
  float* delta = scratch + 2 * seq_len * seq_len;  // rowsum(dO * O) [T]
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      const int64_t q_offset = b * seq_len * heads * head_dim + h * head_dim;
      const int64_t kv_offset = b * seq_len * kv_heads * head_dim + kvh * head_dim;
      const float* qh = q + q_offset;
      const float* oh = out + q_offset;
      const float* doh = dout + q_offset;
      float* dqh = dq + q_offset;
      const float* kh = k + kv_offset;
      const float* vh = v + kv_offset;
      float* dkh = dk + kv_offset;
      float* dvh = dv + kv_offset;
      const float* lse_h = lse + (b * heads + h) * seq_len;
      // Recompute P = exp(scale Q K^T - lse) on the attended keys, 0 elsewhere.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t_len, t_len, d_len, scale, qh, q_stride,
                  kh, kv_stride, 0.0f, probs, t_len);
      for (int64_t t = 0; t < seq_len; ++t) {
        float* row = probs + t * seq_len;
        const int64_t first = FirstKey(t, window);
        const float lse_t = lse_h[t];
        std::fill(row, row + first, 0.0f);
#pragma omp simd
        for (int64_t j = first; j <= t; ++j) row[j] = FastExp(row[j] - lse_t);
        std::fill(row + t + 1, row + seq_len, 0.0f);
        delta[t] = Dot(doh + t * q_stride, oh + t * q_stride, head_dim);
      }
      // dV += P^T dO.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t_len, d_len, t_len, 1.0f, probs, t_len,
                  doh, q_stride, 1.0f, dvh, kv_stride);
      // dP = dO V^T, then dS = P (dP - delta) in place.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t_len, t_len, d_len, 1.0f, doh, q_stride,
                  vh, kv_stride, 0.0f, dscores, t_len);
      for (int64_t t = 0; t < seq_len; ++t) {
        const float* p = probs + t * seq_len;
        float* ds = dscores + t * seq_len;
        const int64_t first = FirstKey(t, window);
        const float delta_t = delta[t];
        std::fill(ds, ds + first, 0.0f);
#pragma omp simd
        for (int64_t j = first; j <= t; ++j) ds[j] = p[j] * (ds[j] - delta_t);
        std::fill(ds + t + 1, ds + seq_len, 0.0f);
      }
      // dQ = scale dS K (this head's columns only: overwrite), dK += scale dS^T Q.
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, t_len, d_len, t_len, scale, dscores,
                  t_len, kh, kv_stride, 0.0f, dqh, q_stride);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, t_len, d_len, t_len, scale, dscores,
                  t_len, qh, q_stride, 1.0f, dkh, kv_stride);
    }
  }
}

void EmbeddingBackward(const float* dx, const int32_t* tokens, float* dtable, int64_t n,
                       int64_t c) {
  for (int64_t r = 0; r < n; ++r) {
    float* row = dtable + static_cast<int64_t>(tokens[r]) * c;
    const float* dxr = dx + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) row[i] += dxr[i];
  }
}

int64_t LmHeadScratchSize(int64_t v) { return kLmHeadChunkRows * v; }

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
    int64_t rows = std::min(kLmHeadChunkRows, n - r);
    while (mask != nullptr && mask[r + rows - 1] == 0) --rows;
    const float* xr = x + r * c;
    float* logits = scratch;  // [rows, V]: logits, then dlogits
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Blas(rows), Blas(v), Blas(c), 1.0f, xr,
                Blas(c), w, Blas(c), 0.0f, logits, Blas(v));
    loss += CrossEntropyRows(logits, targets + r, mask == nullptr ? nullptr : mask + r, rows, v,
                             scale, gradient);
    if (dx != nullptr) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Blas(rows), Blas(c), Blas(v), 1.0f,
                  logits, Blas(v), w, Blas(c), 0.0f, dx + r * c, Blas(c));
    }
    if (dw != nullptr) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Blas(v), Blas(c), Blas(rows), 1.0f,
                  logits, Blas(v), xr, Blas(c), 1.0f, dw, Blas(c));
    }
    r += rows;
  }
  return loss;
}

}  // namespace llamapro::cpu
