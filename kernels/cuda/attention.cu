#include <cstdint>

#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/reduce.cuh"

// Tiling. Rows of bf16 values are kept in shared memory as 32-bit words
// (pairs), kWordStride words per row: one more than a full row, so the 32
// threads of a warp reading word w of 32 different rows hit 32 different
// banks. Scores tiles have kKeys + 1 floats per row for the same reason.
//
// Forward: a block owns kForwardRows queries of one (batch, head) and walks
// the attended keys kKeys at a time with an online softmax; thread
// (row = tid / 4, part = tid % 4) accumulates words part, part + 4, ... of its
// query's output.
//
// Backward, two kernels so that no output needs atomics:
//  * dK/dV: a block owns kKeys keys of one (batch, key/value head) and walks
//    every query tile of every query head in its group that attends to them;
//    thread (key = tid / 8, part = tid % 8) accumulates words part, part + 8,
//    ... of its key's dk and dv.
//  * dQ: a block owns kBackwardRows queries of one (batch, head) and walks
//    the attended keys; thread (query = tid / 8, part = tid % 8) accumulates
//    its words of dq.
// Both recompute p = exp(scale q.k - lse) and ds = p (dout.v - delta) with
// the same code, so they agree bit for bit.

namespace llamapro::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxWords = static_cast<int>(kMaxAttentionHeadDim / 2);
constexpr int kWordStride = kMaxWords + 1;
constexpr int kForwardRows = 64;
constexpr int kBackwardRows = 32;
constexpr int kKeys = 32;
constexpr int kScoreStride = kKeys + 1;
constexpr int kForwardParts = kThreads / kForwardRows;    // 4 threads per query row.
constexpr int kBackwardParts = kThreads / kBackwardRows;  // 8 threads per row.
static_assert(kThreads / kKeys == kBackwardParts, "dK/dV threads per key");
constexpr int kForwardWordsPerThread = kMaxWords / kForwardParts;    // 16
constexpr int kBackwardWordsPerThread = kMaxWords / kBackwardParts;  // 8

struct Shape {
  int64_t seq_len;
  int64_t heads;
  int64_t kv_heads;
  int words;  // head_dim / 2
  int64_t window;
  float scale;
};

__device__ __forceinline__ float NegativeInfinity() { return -__int_as_float(0x7f800000); }

// Whether query t attends to key j.
__device__ __forceinline__ bool Attends(int64_t t, int64_t j, const Shape& s) {
  return t < s.seq_len && j <= t && (s.window <= 0 || j > t - s.window);
}

// Loads `rows` rows of one head, starting at position `first`, into
// tile[row][word]; rows past the sequence are zero-filled (so they never
// carry NaN into a product). `row_words` is the distance between consecutive
// positions in words (heads * words).
__device__ __forceinline__ void LoadTile(uint32_t (*tile)[kWordStride], const uint32_t* head_base,
                                         int64_t first, int rows, int64_t row_words,
                                         const Shape& s) {
  for (int idx = threadIdx.x; idx < rows * s.words; idx += blockDim.x) {
    const int r = idx / s.words;
    const int w = idx % s.words;
    const int64_t t = first + r;
    tile[r][w] = t < s.seq_len ? head_base[t * row_words + w] : 0u;
  }
}

__device__ __forceinline__ float Dot(const uint32_t* a, const uint32_t* b, int words) {
  float acc = 0.0f;
  for (int w = 0; w < words; ++w) {
    const uint32_t x = a[w];
    const uint32_t y = b[w];
    acc += LowBF16(x) * LowBF16(y) + HighBF16(x) * HighBF16(y);
  }
  return acc;
}

// p and ds for query q0 + i and key k0 + j (both 0 where the query does not
// attend to the key).
__device__ __forceinline__ void ProbabilityAndScoreGradient(
    const uint32_t (*q_tile)[kWordStride], const uint32_t (*do_tile)[kWordStride],
    const uint32_t (*k_tile)[kWordStride], const uint32_t (*v_tile)[kWordStride],
    const float* lse_tile, const float* delta_tile, int64_t q0, int64_t k0, int i, int j,
    const Shape& s, float* p_out, float* ds_out) {
  float p = 0.0f;
  float ds = 0.0f;
  if (Attends(q0 + i, k0 + j, s)) {
    const float score = Dot(q_tile[i], k_tile[j], s.words) * s.scale;
    p = expf(score - lse_tile[i]);
    const float dp = Dot(do_tile[i], v_tile[j], s.words);
    ds = p * (dp - delta_tile[i]);
  }
  *p_out = p;
  *ds_out = ds;
}

__global__ void __launch_bounds__(kThreads)
    AttentionForwardKernel(const uint32_t* __restrict__ q, const uint32_t* __restrict__ k,
                           const uint32_t* __restrict__ v, uint32_t* __restrict__ out,
                           float* __restrict__ lse, Shape s) {
  __shared__ uint32_t q_tile[kForwardRows][kWordStride];
  __shared__ uint32_t k_tile[kKeys][kWordStride];
  __shared__ uint32_t v_tile[kKeys][kWordStride];
  __shared__ float scores[kForwardRows][kScoreStride];

  const int64_t b = blockIdx.z;
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / (s.heads / s.kv_heads);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kForwardRows;
  const int64_t q_row_words = s.heads * s.words;
  const int64_t kv_row_words = s.kv_heads * s.words;
  const uint32_t* q_base = q + (b * s.seq_len * s.heads + h) * s.words;
  const uint32_t* k_base = k + (b * s.seq_len * s.kv_heads + kvh) * s.words;
  const uint32_t* v_base = v + (b * s.seq_len * s.kv_heads + kvh) * s.words;

  LoadTile(q_tile, q_base, q0, kForwardRows, q_row_words, s);

  const int row = threadIdx.x / kForwardParts;
  const int part = threadIdx.x % kForwardParts;
  float running_max = NegativeInfinity();
  float running_sum = 0.0f;
  float acc[2 * kForwardWordsPerThread];
#pragma unroll
  for (int x = 0; x < 2 * kForwardWordsPerThread; ++x) acc[x] = 0.0f;

  const int64_t last_query =
      q0 + kForwardRows - 1 < s.seq_len - 1 ? q0 + kForwardRows - 1 : s.seq_len - 1;
  const int64_t k_begin = s.window > 0 && q0 - s.window + 1 > 0 ? q0 - s.window + 1 : 0;
  for (int64_t k0 = k_begin; k0 <= last_query; k0 += kKeys) {
    __syncthreads();  // The previous tile is no longer read.
    LoadTile(k_tile, k_base, k0, kKeys, kv_row_words, s);
    LoadTile(v_tile, v_base, k0, kKeys, kv_row_words, s);
    __syncthreads();
    for (int e = threadIdx.x; e < kForwardRows * kKeys; e += blockDim.x) {
      const int i = e / kKeys;
      const int j = e % kKeys;
      scores[i][j] = Attends(q0 + i, k0 + j, s) ? Dot(q_tile[i], k_tile[j], s.words) * s.scale
                                                : NegativeInfinity();
    }
    __syncthreads();

    // Online softmax over this tile for query `row`; its kForwardParts
    // threads are adjacent lanes of one warp.
    float tile_max = NegativeInfinity();
    for (int j = part; j < kKeys; j += kForwardParts) tile_max = fmaxf(tile_max, scores[row][j]);
    for (int offset = 1; offset < kForwardParts; offset <<= 1) {
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
    }
    const float new_max = fmaxf(running_max, tile_max);
    // A row with no attended key yet keeps max -inf; exp(-inf - 0) = 0 then.
    const float shift = new_max == NegativeInfinity() ? 0.0f : new_max;
    const float correction = expf(running_max - shift);
    float tile_sum = 0.0f;
    for (int j = part; j < kKeys; j += kForwardParts) {
      const float p = expf(scores[row][j] - shift);
      scores[row][j] = p;
      tile_sum += p;
    }
    for (int offset = 1; offset < kForwardParts; offset <<= 1) {
      tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, offset);
    }
    running_sum = running_sum * correction + tile_sum;
    running_max = new_max;
    __syncwarp();  // The row's probabilities, written by its lanes, are read by all of them.
#pragma unroll
    for (int x = 0; x < 2 * kForwardWordsPerThread; ++x) acc[x] *= correction;
    for (int j = 0; j < kKeys; ++j) {
      const float p = scores[row][j];
#pragma unroll
      for (int x = 0; x < kForwardWordsPerThread; ++x) {
        const int w = part + x * kForwardParts;
        if (w < s.words) {
          const uint32_t pair = v_tile[j][w];
          acc[2 * x] += p * LowBF16(pair);
          acc[2 * x + 1] += p * HighBF16(pair);
        }
      }
    }
  }

  const int64_t t = q0 + row;
  if (t < s.seq_len) {
    const float inv_sum = 1.0f / running_sum;
    uint32_t* out_row = out + ((b * s.seq_len + t) * s.heads + h) * s.words;
#pragma unroll
    for (int x = 0; x < kForwardWordsPerThread; ++x) {
      const int w = part + x * kForwardParts;
      if (w < s.words) out_row[w] = PackBF16(acc[2 * x] * inv_sum, acc[2 * x + 1] * inv_sum);
    }
    if (part == 0) lse[(b * s.heads + h) * s.seq_len + t] = running_max + logf(running_sum);
  }
}

// delta[b, h, t] = dout_t . out_t in fp32, one warp per (b, t, h).
__global__ void AttentionDeltaKernel(const uint32_t* __restrict__ out,
                                     const uint32_t* __restrict__ dout, float* __restrict__ delta,
                                     int64_t rows, Shape s) {
  const int64_t r = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= rows) return;  // Whole warps leave together.
  float acc = 0.0f;
  for (int w = lane; w < s.words; w += 32) {
    const uint32_t o = out[r * s.words + w];
    const uint32_t d = dout[r * s.words + w];
    acc += LowBF16(o) * LowBF16(d) + HighBF16(o) * HighBF16(d);
  }
  acc = WarpSum(acc);
  if (lane == 0) {
    const int64_t h = r % s.heads;
    const int64_t bt = r / s.heads;
    const int64_t t = bt % s.seq_len;
    const int64_t b = bt / s.seq_len;
    delta[(b * s.heads + h) * s.seq_len + t] = acc;
  }
}

// Loads lse and delta of queries q0 .. q0 + kBackwardRows - 1 of one (b, h).
__device__ __forceinline__ void LoadRowStats(float* lse_tile, float* delta_tile,
                                             const float* lse_row, const float* delta_row,
                                             int64_t q0, const Shape& s) {
  for (int i = threadIdx.x; i < kBackwardRows; i += blockDim.x) {
    const int64_t t = q0 + i;
    lse_tile[i] = t < s.seq_len ? lse_row[t] : 0.0f;
    delta_tile[i] = t < s.seq_len ? delta_row[t] : 0.0f;
  }
}

__global__ void __launch_bounds__(kThreads)
    AttentionBackwardKeyValueKernel(const uint32_t* __restrict__ q, const uint32_t* __restrict__ k,
                                    const uint32_t* __restrict__ v, const float* __restrict__ lse,
                                    const uint32_t* __restrict__ dout,
                                    const float* __restrict__ delta, uint32_t* __restrict__ dk,
                                    uint32_t* __restrict__ dv, Shape s) {
  __shared__ uint32_t k_tile[kKeys][kWordStride];
  __shared__ uint32_t v_tile[kKeys][kWordStride];
  __shared__ uint32_t q_tile[kBackwardRows][kWordStride];
  __shared__ uint32_t do_tile[kBackwardRows][kWordStride];
  __shared__ float p_tile[kBackwardRows][kScoreStride];
  __shared__ float ds_tile[kBackwardRows][kScoreStride];
  __shared__ float lse_tile[kBackwardRows];
  __shared__ float delta_tile[kBackwardRows];

  const int64_t b = blockIdx.z;
  const int64_t kvh = blockIdx.y;
  const int64_t group = s.heads / s.kv_heads;
  const int64_t k0 = static_cast<int64_t>(blockIdx.x) * kKeys;
  const int64_t q_row_words = s.heads * s.words;
  const int64_t kv_row_words = s.kv_heads * s.words;
  LoadTile(k_tile, k + (b * s.seq_len * s.kv_heads + kvh) * s.words, k0, kKeys, kv_row_words, s);
  LoadTile(v_tile, v + (b * s.seq_len * s.kv_heads + kvh) * s.words, k0, kKeys, kv_row_words, s);

  const int key = threadIdx.x / kBackwardParts;
  const int part = threadIdx.x % kBackwardParts;
  float dk_acc[2 * kBackwardWordsPerThread];
  float dv_acc[2 * kBackwardWordsPerThread];
#pragma unroll
  for (int x = 0; x < 2 * kBackwardWordsPerThread; ++x) {
    dk_acc[x] = 0.0f;
    dv_acc[x] = 0.0f;
  }

  // Queries that attend to keys k0 .. k0 + kKeys - 1: t >= k0, and with a
  // window t <= k0 + kKeys - 1 + window - 1.
  int64_t q_end = s.seq_len;
  if (s.window > 0 && k0 + kKeys - 1 + s.window < q_end) q_end = k0 + kKeys - 1 + s.window;
  for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    const uint32_t* q_base = q + (b * s.seq_len * s.heads + h) * s.words;
    const uint32_t* do_base = dout + (b * s.seq_len * s.heads + h) * s.words;
    const float* lse_row = lse + (b * s.heads + h) * s.seq_len;
    const float* delta_row = delta + (b * s.heads + h) * s.seq_len;
    for (int64_t q0 = k0; q0 < q_end; q0 += kBackwardRows) {
      __syncthreads();  // The previous query tile is no longer read.
      LoadTile(q_tile, q_base, q0, kBackwardRows, q_row_words, s);
      LoadTile(do_tile, do_base, q0, kBackwardRows, q_row_words, s);
      LoadRowStats(lse_tile, delta_tile, lse_row, delta_row, q0, s);
      __syncthreads();
      for (int e = threadIdx.x; e < kBackwardRows * kKeys; e += blockDim.x) {
        const int i = e / kKeys;
        const int j = e % kKeys;
        ProbabilityAndScoreGradient(q_tile, do_tile, k_tile, v_tile, lse_tile, delta_tile, q0, k0,
                                    i, j, s, &p_tile[i][j], &ds_tile[i][j]);
      }
      __syncthreads();
      for (int i = 0; i < kBackwardRows; ++i) {
        const float p = p_tile[i][key];
        const float ds = ds_tile[i][key];
#pragma unroll
        for (int x = 0; x < kBackwardWordsPerThread; ++x) {
          const int w = part + x * kBackwardParts;
          if (w < s.words) {
            const uint32_t qp = q_tile[i][w];
            const uint32_t dp = do_tile[i][w];
            dk_acc[2 * x] += ds * LowBF16(qp);
            dk_acc[2 * x + 1] += ds * HighBF16(qp);
            dv_acc[2 * x] += p * LowBF16(dp);
            dv_acc[2 * x + 1] += p * HighBF16(dp);
          }
        }
      }
    }
  }

  const int64_t j = k0 + key;
  if (j < s.seq_len) {
    const int64_t offset = ((b * s.seq_len + j) * s.kv_heads + kvh) * s.words;
#pragma unroll
    for (int x = 0; x < kBackwardWordsPerThread; ++x) {
      const int w = part + x * kBackwardParts;
      if (w < s.words) {
        dk[offset + w] = PackBF16(s.scale * dk_acc[2 * x], s.scale * dk_acc[2 * x + 1]);
        dv[offset + w] = PackBF16(dv_acc[2 * x], dv_acc[2 * x + 1]);
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads)
    AttentionBackwardQueryKernel(const uint32_t* __restrict__ q, const uint32_t* __restrict__ k,
                                 const uint32_t* __restrict__ v, const float* __restrict__ lse,
                                 const uint32_t* __restrict__ dout, const float* __restrict__ delta,
                                 uint32_t* __restrict__ dq, Shape s) {
  __shared__ uint32_t q_tile[kBackwardRows][kWordStride];
  __shared__ uint32_t do_tile[kBackwardRows][kWordStride];
  __shared__ uint32_t k_tile[kKeys][kWordStride];
  __shared__ uint32_t v_tile[kKeys][kWordStride];
  __shared__ float p_tile[kBackwardRows][kScoreStride];
  __shared__ float ds_tile[kBackwardRows][kScoreStride];
  __shared__ float lse_tile[kBackwardRows];
  __shared__ float delta_tile[kBackwardRows];

  const int64_t b = blockIdx.z;
  const int64_t h = blockIdx.y;
  const int64_t kvh = h / (s.heads / s.kv_heads);
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBackwardRows;
  const int64_t q_row_words = s.heads * s.words;
  const int64_t kv_row_words = s.kv_heads * s.words;
  LoadTile(q_tile, q + (b * s.seq_len * s.heads + h) * s.words, q0, kBackwardRows, q_row_words, s);
  LoadTile(do_tile, dout + (b * s.seq_len * s.heads + h) * s.words, q0, kBackwardRows, q_row_words,
           s);
  LoadRowStats(lse_tile, delta_tile, lse + (b * s.heads + h) * s.seq_len,
               delta + (b * s.heads + h) * s.seq_len, q0, s);
  const uint32_t* k_base = k + (b * s.seq_len * s.kv_heads + kvh) * s.words;
  const uint32_t* v_base = v + (b * s.seq_len * s.kv_heads + kvh) * s.words;

  const int row = threadIdx.x / kBackwardParts;
  const int part = threadIdx.x % kBackwardParts;
  float dq_acc[2 * kBackwardWordsPerThread];
#pragma unroll
  for (int x = 0; x < 2 * kBackwardWordsPerThread; ++x) dq_acc[x] = 0.0f;

  const int64_t last_query =
      q0 + kBackwardRows - 1 < s.seq_len - 1 ? q0 + kBackwardRows - 1 : s.seq_len - 1;
  const int64_t k_begin = s.window > 0 && q0 - s.window + 1 > 0 ? q0 - s.window + 1 : 0;
  for (int64_t k0 = k_begin; k0 <= last_query; k0 += kKeys) {
    __syncthreads();  // The previous key tile is no longer read (and the loads above are done).
    LoadTile(k_tile, k_base, k0, kKeys, kv_row_words, s);
    LoadTile(v_tile, v_base, k0, kKeys, kv_row_words, s);
    __syncthreads();
    for (int e = threadIdx.x; e < kBackwardRows * kKeys; e += blockDim.x) {
      const int i = e / kKeys;
      const int j = e % kKeys;
      ProbabilityAndScoreGradient(q_tile, do_tile, k_tile, v_tile, lse_tile, delta_tile, q0, k0, i,
                                  j, s, &p_tile[i][j], &ds_tile[i][j]);
    }
    __syncthreads();
    for (int j = 0; j < kKeys; ++j) {
      const float ds = ds_tile[row][j];
#pragma unroll
      for (int x = 0; x < kBackwardWordsPerThread; ++x) {
        const int w = part + x * kBackwardParts;
        if (w < s.words) {
          const uint32_t kp = k_tile[j][w];
          dq_acc[2 * x] += ds * LowBF16(kp);
          dq_acc[2 * x + 1] += ds * HighBF16(kp);
        }
      }
    }
  }

  const int64_t t = q0 + row;
  if (t < s.seq_len) {
    uint32_t* dq_row = dq + ((b * s.seq_len + t) * s.heads + h) * s.words;
#pragma unroll
    for (int x = 0; x < kBackwardWordsPerThread; ++x) {
      const int w = part + x * kBackwardParts;
      if (w < s.words) {
        dq_row[w] = PackBF16(s.scale * dq_acc[2 * x], s.scale * dq_acc[2 * x + 1]);
      }
    }
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; }

// Checks the shape; fills `s` and returns cudaSuccess, or cudaErrorInvalidValue.
cudaError_t MakeShape(int64_t batch, int64_t seq_len, int64_t heads, int64_t kv_heads,
                      int64_t head_dim, int64_t window, Shape* s) {
  if (batch < 0 || seq_len < 0 || heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 ||
      head_dim <= 0 || head_dim % 2 != 0 || head_dim > kMaxAttentionHeadDim || heads > 65535 ||
      batch > 65535 || seq_len > (int64_t{1} << 30)) {
    return cudaErrorInvalidValue;
  }
  s->seq_len = seq_len;
  s->heads = heads;
  s->kv_heads = kv_heads;
  s->words = static_cast<int>(head_dim / 2);
  s->window = window;
  s->scale = 1.0f / sqrtf(static_cast<float>(head_dim));
  return cudaSuccess;
}

const uint32_t* Words(const uint16_t* p) { return reinterpret_cast<const uint32_t*>(p); }
uint32_t* Words(uint16_t* p) { return reinterpret_cast<uint32_t*>(p); }

}  // namespace

cudaError_t AttentionForward(const uint16_t* q, const uint16_t* k, const uint16_t* v, uint16_t* out,
                             float* lse, int64_t batch, int64_t seq_len, int64_t heads,
                             int64_t kv_heads, int64_t head_dim, int64_t window,
                             cudaStream_t stream) {
  Shape s;
  if (cudaError_t err = MakeShape(batch, seq_len, heads, kv_heads, head_dim, window, &s);
      err != cudaSuccess) {
    return err;
  }
  if (!Aligned(q) || !Aligned(k) || !Aligned(v) || !Aligned(out)) return cudaErrorInvalidValue;
  if (batch == 0 || seq_len == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((seq_len + kForwardRows - 1) / kForwardRows),
                  static_cast<unsigned>(heads), static_cast<unsigned>(batch));
  AttentionForwardKernel<<<grid, kThreads, 0, stream>>>(Words(q), Words(k), Words(v), Words(out),
                                                        lse, s);
  return cudaGetLastError();
}

int64_t AttentionBackwardScratchSize(int64_t batch, int64_t seq_len, int64_t heads) {
  return batch * seq_len * heads;
}

cudaError_t AttentionBackward(const uint16_t* q, const uint16_t* k, const uint16_t* v,
                              const uint16_t* out, const float* lse, const uint16_t* dout,
                              uint16_t* dq, uint16_t* dk, uint16_t* dv, int64_t batch,
                              int64_t seq_len, int64_t heads, int64_t kv_heads, int64_t head_dim,
                              int64_t window, float* scratch, cudaStream_t stream) {
  Shape s;
  if (cudaError_t err = MakeShape(batch, seq_len, heads, kv_heads, head_dim, window, &s);
      err != cudaSuccess) {
    return err;
  }
  if (!Aligned(q) || !Aligned(k) || !Aligned(v) || !Aligned(out) || !Aligned(dout) ||
      !Aligned(dq) || !Aligned(dk) || !Aligned(dv)) {
    return cudaErrorInvalidValue;
  }
  if (batch == 0 || seq_len == 0) return cudaSuccess;
  const int64_t rows = batch * seq_len * heads;
  const int64_t delta_blocks = (rows * 32 + kThreads - 1) / kThreads;
  if (delta_blocks > 0x7fffffff) return cudaErrorInvalidValue;
  AttentionDeltaKernel<<<static_cast<unsigned>(delta_blocks), kThreads, 0, stream>>>(
      Words(out), Words(dout), scratch, rows, s);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  const dim3 kv_grid(static_cast<unsigned>((seq_len + kKeys - 1) / kKeys),
                     static_cast<unsigned>(kv_heads), static_cast<unsigned>(batch));
  AttentionBackwardKeyValueKernel<<<kv_grid, kThreads, 0, stream>>>(
      Words(q), Words(k), Words(v), lse, Words(dout), scratch, Words(dk), Words(dv), s);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  const dim3 q_grid(static_cast<unsigned>((seq_len + kBackwardRows - 1) / kBackwardRows),
                    static_cast<unsigned>(heads), static_cast<unsigned>(batch));
  AttentionBackwardQueryKernel<<<q_grid, kThreads, 0, stream>>>(Words(q), Words(k), Words(v), lse,
                                                                Words(dout), scratch, Words(dq), s);
  return cudaGetLastError();
}

}  // namespace llamapro::cuda
