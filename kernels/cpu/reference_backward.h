// Reference implementations of the training ops: the forward variants that
// save what a backward needs, and the backward of every op in
// kernels/cpu/reference.h. Plain loops, templated on the scalar type so the
// finite-difference checks (tests/unit/gradcheck_test.cc) run them in double.
// They are the specification for the training section of kernels/cpu/ops.h
// (same arguments, same overwrite/accumulate/nullptr conventions) and favour
// clarity over speed; unlike the fast ops they may allocate.
//
// Conventions: a gradient output named d* is overwritten unless documented
// "accumulated (+=)"; weight gradients are always accumulated; nullptr skips an
// output. Layouts and dimension letters as in reference.h.
//
// All functions are pure (they write only their output arguments) and
// thread-compatible.
#ifndef LLAMAPRO_KERNELS_CPU_REFERENCE_BACKWARD_H_
#define LLAMAPRO_KERNELS_CPU_REFERENCE_BACKWARD_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/reference.h"

namespace llamapro::ref {

// RMSNorm forward (as RmsNorm) that also stores
// inv_rms[r] = 1 / sqrt(mean(x_r^2) + eps).
template <typename T>
void RmsNormForward(const T* x, const T* w, T* y, T* inv_rms, int64_t n, int64_t c, T eps) {
  for (int64_t r = 0; r < n; ++r) {
    const T* xr = x + r * c;
    T sum_sq = 0;
    for (int64_t i = 0; i < c; ++i) sum_sq += xr[i] * xr[i];
    inv_rms[r] = T(1) / std::sqrt(sum_sq / T(c) + eps);
    for (int64_t i = 0; i < c; ++i) y[r * c + i] = xr[i] * inv_rms[r] * w[i];
  }
}

// With y_i = x_i s w_i and s = (mean(x^2) + eps)^(-1/2), ds/dx_k = -s^3 x_k / C:
//   dx_k = dy_k w_k s - x_k s^3 / C * sum_i dy_i w_i x_i   (overwritten)
//   dw_i += dy_i x_i s                                      (accumulated)
template <typename T>
void RmsNormBackward(const T* dy, const T* x, const T* w, const T* inv_rms, T* dx, T* dw, int64_t n,
                     int64_t c) {
  for (int64_t r = 0; r < n; ++r) {
    const T* dyr = dy + r * c;
    const T* xr = x + r * c;
    const T s = inv_rms[r];
    if (dx != nullptr) {
      T dot = 0;
      for (int64_t i = 0; i < c; ++i) dot += dyr[i] * w[i] * xr[i];
      for (int64_t k = 0; k < c; ++k) {
        dx[r * c + k] = dyr[k] * w[k] * s - xr[k] * s * s * s / T(c) * dot;
      }
    }
    if (dw != nullptr) {
      for (int64_t i = 0; i < c; ++i) dw[i] += dyr[i] * xr[i] * s;
    }
  }
}

// For y = x W^T + b: dx[N, in] = dy W (overwritten), dw[out, in] += dy^T x,
// db[out] += column sums of dy. Each may be nullptr.
template <typename T>
void LinearBackward(const T* dy, const T* x, const T* w, T* dx, T* dw, T* db, int64_t n, int64_t in,
                    int64_t out) {
  if (dx != nullptr) {
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t i = 0; i < in; ++i) {
        T acc = 0;
        for (int64_t o = 0; o < out; ++o) acc += dy[r * out + o] * w[o * in + i];
        dx[r * in + i] = acc;
      }
    }
  }
  if (dw != nullptr) {
    for (int64_t o = 0; o < out; ++o) {
      for (int64_t i = 0; i < in; ++i) {
        T acc = 0;
        for (int64_t r = 0; r < n; ++r) acc += dy[r * out + o] * x[r * in + i];
        dw[o * in + i] += acc;
      }
    }
  }
  if (db != nullptr) {
    for (int64_t o = 0; o < out; ++o) {
      T acc = 0;
      for (int64_t r = 0; r < n; ++r) acc += dy[r * out + o];
      db[o] += acc;
    }
  }
}

// ApplyRope rotates each pair (i, i + D/2) by +angle; its transpose (and
// inverse) rotates by -angle, in place on the gradient:
//   dx[i]       = g[i] cos + g[i + D/2] sin
//   dx[i + D/2] = g[i + D/2] cos - g[i] sin
template <typename T>
void ApplyRopeBackward(T* dx, const T* cos_table, const T* sin_table, int64_t batch,
                       int64_t seq_len, int64_t heads, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq_len; ++t) {
      for (int64_t h = 0; h < heads; ++h) {
        T* g = dx + ((b * seq_len + t) * heads + h) * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const T c = cos_table[t * half + i];
          const T s = sin_table[t * half + i];
          const T lo = g[i];
          const T hi = g[i + half];
          g[i] = lo * c + hi * s;
          g[i + half] = hi * c - lo * s;
        }
      }
    }
  }
}

// For out = silu(g) u with silu(g) = g sigmoid(g):
//   dgate = dout u sigmoid(g) (1 + g (1 - sigmoid(g))),  dup = dout silu(g).
// Both overwritten; dgate may alias gate and dup may alias up.
template <typename T>
void SiluMulBackward(const T* gate, const T* up, const T* dout, T* dgate, T* dup, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T g = gate[i];
    const T u = up[i];
    const T d = dout[i];
    const T sigmoid = T(1) / (T(1) + std::exp(-g));
    if (dgate != nullptr) dgate[i] = d * u * sigmoid * (T(1) + g * (T(1) - sigmoid));
    if (dup != nullptr) dup[i] = d * g * sigmoid;
  }
}

// Attention (exactly as ref::Attention: causal, GQA, sliding window) that also
// stores lse[B, H, T] = log sum_j exp(scale q_t . k_j) over the keys j that
// query t attends to.
template <typename T>
void AttentionForward(const T* q, const T* k, const T* v, T* out, T* lse, int64_t batch,
                      int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      int64_t window) {
  Attention(q, k, v, out, batch, seq_len, heads, kv_heads, head_dim, window);
  const int64_t group = heads / kv_heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t t = 0; t < seq_len; ++t) {
        const T* qv = q + ((b * seq_len + t) * heads + h) * head_dim;
        const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
        std::vector<T> scores;
        for (int64_t j = first; j <= t; ++j) {
          const T* kv = k + ((b * seq_len + j) * kv_heads + kvh) * head_dim;
          T dot = 0;
          for (int64_t d = 0; d < head_dim; ++d) dot += qv[d] * kv[d];
          scores.push_back(dot * scale);
        }
        const T max_score = *std::max_element(scores.begin(), scores.end());
        T sum = 0;
        for (T s : scores) sum += std::exp(s - max_score);
        lse[(b * heads + h) * seq_len + t] = max_score + std::log(sum);
      }
    }
  }
}

// Backward of AttentionForward. With p_tj = exp(scale q_t . k_j - lse_t) over
// the attended keys and delta_t = dout_t . out_t (= sum_j p_tj dp_tj):
//   dp_tj = dout_t . v_j,  ds_tj = p_tj (dp_tj - delta_t),
//   dq_t = scale sum_j ds_tj k_j,  dk_j += scale ds_tj q_t,  dv_j += p_tj dout_t,
// where dk and dv sum over the query heads sharing a key/value head. dq, dk and
// dv are all overwritten.
template <typename T>
void AttentionBackward(const T* q, const T* k, const T* v, const T* out, const T* lse,
                       const T* dout, T* dq, T* dk, T* dv, int64_t batch, int64_t seq_len,
                       int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window) {
  const int64_t group = heads / kv_heads;
  const T scale = T(1) / std::sqrt(static_cast<T>(head_dim));
  std::fill(dq, dq + batch * seq_len * heads * head_dim, T(0));
  std::fill(dk, dk + batch * seq_len * kv_heads * head_dim, T(0));
  std::fill(dv, dv + batch * seq_len * kv_heads * head_dim, T(0));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      for (int64_t t = 0; t < seq_len; ++t) {
        const int64_t q_offset = ((b * seq_len + t) * heads + h) * head_dim;
        const T* qv = q + q_offset;
        const T* ov = out + q_offset;
        const T* dov = dout + q_offset;
        T* dqv = dq + q_offset;
        const T lse_t = lse[(b * heads + h) * seq_len + t];
        T delta = 0;
        for (int64_t d = 0; d < head_dim; ++d) delta += dov[d] * ov[d];
        const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
        for (int64_t j = first; j <= t; ++j) {
          const int64_t kv_offset = ((b * seq_len + j) * kv_heads + kvh) * head_dim;
          const T* kv = k + kv_offset;
          const T* vv = v + kv_offset;
          T score = 0;
          T dp = 0;
          for (int64_t d = 0; d < head_dim; ++d) {
            score += qv[d] * kv[d];
            dp += dov[d] * vv[d];
          }
          const T p = std::exp(score * scale - lse_t);
          const T ds = p * (dp - delta);
          for (int64_t d = 0; d < head_dim; ++d) {
            dqv[d] += scale * ds * kv[d];
            dk[kv_offset + d] += scale * ds * qv[d];
            dv[kv_offset + d] += p * dov[d];
          }
        }
      }
    }
  }
}

// dtable[tokens[r]] += dx[r] for each of n rows of C values (accumulated).
template <typename T>
void EmbeddingBackward(const T* dx, const int32_t* tokens, T* dtable, int64_t n, int64_t c) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t i = 0; i < c; ++i)
      dtable[static_cast<int64_t>(tokens[r]) * c + i] += dx[r * c + i];
  }
}

// Cross-entropy over n rows of V logits with a loss mask (mask == nullptr
// means every row; targets of rows with mask[r] == 0 are never read). Returns
// sum over masked rows of -log softmax(logits_r)[targets[r]]. If dlogits !=
// nullptr it is overwritten with the gradient of scale * (that sum):
// scale * (softmax - onehot) for masked rows, 0 for the others.
template <typename T>
T CrossEntropy(const T* logits, const int32_t* targets, const uint8_t* mask, T* dlogits, int64_t n,
               int64_t v, T scale) {
  T loss = 0;
  for (int64_t r = 0; r < n; ++r) {
    const T* row = logits + r * v;
    if (mask != nullptr && mask[r] == 0) {
      if (dlogits != nullptr) std::fill(dlogits + r * v, dlogits + (r + 1) * v, T(0));
      continue;
    }
    const T max_value = *std::max_element(row, row + v);
    T sum = 0;
    for (int64_t i = 0; i < v; ++i) sum += std::exp(row[i] - max_value);
    const T log_sum_exp = max_value + std::log(sum);
    loss += log_sum_exp - row[targets[r]];
    if (dlogits != nullptr) {
      for (int64_t i = 0; i < v; ++i) {
        const T onehot = i == targets[r] ? T(1) : T(0);
        dlogits[r * v + i] = scale * (std::exp(row[i] - log_sum_exp) - onehot);
      }
    }
  }
  return loss;
}

// lm_head + cross-entropy, composed from Linear, CrossEntropy and
// LinearBackward with the semantics of cpu::LmHeadCrossEntropy: x [N, C],
// w [V, C]. Returns the masked loss sum; dx (overwritten, zero rows where the
// mask is 0) and dw (accumulated) are gradients of scale * loss; either may be
// nullptr.
template <typename T>
T LmHeadCrossEntropy(const T* x, const T* w, const int32_t* targets, const uint8_t* mask, T scale,
                     T* dx, T* dw, int64_t n, int64_t c, int64_t v) {
  std::vector<T> logits(n * v);
  Linear(x, w, static_cast<const T*>(nullptr), logits.data(), n, c, v);
  std::vector<T> dlogits(n * v);
  const T loss = CrossEntropy(logits.data(), targets, mask, dlogits.data(), n, v, scale);
  LinearBackward(dlogits.data(), x, w, dx, dw, static_cast<T*>(nullptr), n, c, v);
  return loss;
}

}  // namespace llamapro::ref

#endif  // LLAMAPRO_KERNELS_CPU_REFERENCE_BACKWARD_H_
