// CUDA conformance of the flash-style causal GQA attention, forward (out and
// the saved log-sum-exp) and backward (dq, dk, dv), against
// ref::AttentionForward / ref::AttentionBackward in double on the same
// bf16-rounded inputs. Shapes cover sequence lengths that are not multiples
// of the tiles, GQA group sizes 1 to 4, head sizes 32 to 128 (and one of 40,
// not a power of two), and sliding windows shorter and longer than a tile.
// Outputs are poisoned with NaN before each run. Skipped where no CUDA device
// is usable.
#include "kernels/cuda/attention.cuh"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <ostream>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference_backward.h"
#include "tests/cuda/cuda_test_util.h"

namespace llamapro {
namespace {

using cuda_test::Close;
using cuda_test::DeviceBuffer;
using cuda_test::kBF16Tolerance;
using cuda_test::kF32Tolerance;
using cuda_test::RandomBF16;
using cuda_test::ToDouble;

struct AttentionCase {
  int64_t batch, seq_len, heads, kv_heads, head_dim, window;
};

std::ostream& operator<<(std::ostream& os, const AttentionCase& c) {
  return os << "B=" << c.batch << " T=" << c.seq_len << " H=" << c.heads << " Hkv=" << c.kv_heads
            << " D=" << c.head_dim << " window=" << c.window;
}

class CudaAttentionTest : public cuda_test::CudaTest,
                          public ::testing::WithParamInterface<AttentionCase> {};

// Inputs of one case: q, k, v (and dout) uniform in [-2, 2), which makes
// scores of standard deviation ~1.3, so softmax rows range from flat to
// peaked.
struct Inputs {
  std::vector<uint16_t> q, k, v, dout;
};

Inputs MakeInputs(const AttentionCase& c) {
  std::mt19937 rng(static_cast<uint32_t>(c.seq_len * 131 + c.head_dim * 7 + c.window));
  const int64_t q_size = c.batch * c.seq_len * c.heads * c.head_dim;
  const int64_t kv_size = c.batch * c.seq_len * c.kv_heads * c.head_dim;
  Inputs in;
  in.q = RandomBF16(q_size, &rng, 2.0f);
  in.k = RandomBF16(kv_size, &rng, 2.0f);
  in.v = RandomBF16(kv_size, &rng, 2.0f);
  in.dout = RandomBF16(q_size, &rng, 1.0f);
  return in;
}

TEST_P(CudaAttentionTest, ForwardMatchesTheReferenceAndSavesLogSumExp) {
  const AttentionCase c = GetParam();
  const Inputs in = MakeInputs(c);
  DeviceBuffer<uint16_t> d_q(in.q), d_k(in.k), d_v(in.v), d_out(in.q.size());
  DeviceBuffer<float> d_lse(c.batch * c.heads * c.seq_len);
  ASSERT_EQ(
      cuda::AttentionForward(d_q.get(), d_k.get(), d_v.get(), d_out.get(), d_lse.get(), c.batch,
                             c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window, nullptr),
      cudaSuccess);
  std::vector<double> out(in.q.size()), lse(d_lse.size());
  ref::AttentionForward(ToDouble(in.q).data(), ToDouble(in.k).data(), ToDouble(in.v).data(),
                        out.data(), lse.data(), c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim,
                        c.window);
  EXPECT_TRUE(Close("attention out", ToDouble(d_out.Download()), out, kBF16Tolerance, c.head_dim));
  EXPECT_TRUE(Close("attention lse", ToDouble(d_lse.Download()), lse, kF32Tolerance));
}

TEST_P(CudaAttentionTest, BackwardMatchesTheReference) {
  const AttentionCase c = GetParam();
  const Inputs in = MakeInputs(c);
  const std::vector<double> q = ToDouble(in.q), k = ToDouble(in.k), v = ToDouble(in.v);
  // The forward's outputs as the device would hold them: out in bf16, lse in
  // fp32. The reference backward reads the same rounded values.
  std::vector<double> out(q.size()), lse(c.batch * c.heads * c.seq_len);
  ref::AttentionForward(q.data(), k.data(), v.data(), out.data(), lse.data(), c.batch, c.seq_len,
                        c.heads, c.kv_heads, c.head_dim, c.window);
  const std::vector<uint16_t> out_bf16 = cuda_test::ToBF16(out);
  const std::vector<float> lse_f32 = cuda_test::ToF32(lse);

  DeviceBuffer<uint16_t> d_q(in.q), d_k(in.k), d_v(in.v), d_out(out_bf16), d_dout(in.dout);
  DeviceBuffer<float> d_lse(lse_f32);
  DeviceBuffer<uint16_t> d_dq(in.q.size()), d_dk(in.k.size()), d_dv(in.v.size());
  DeviceBuffer<float> d_scratch(cuda::AttentionBackwardScratchSize(c.batch, c.seq_len, c.heads));
  ASSERT_EQ(
      cuda::AttentionBackward(d_q.get(), d_k.get(), d_v.get(), d_out.get(), d_lse.get(),
                              d_dout.get(), d_dq.get(), d_dk.get(), d_dv.get(), c.batch, c.seq_len,
                              c.heads, c.kv_heads, c.head_dim, c.window, d_scratch.get(), nullptr),
      cudaSuccess);
  std::vector<double> dq(q.size()), dk(k.size()), dv(v.size());
  ref::AttentionBackward(q.data(), k.data(), v.data(), ToDouble(out_bf16).data(),
                         ToDouble(lse_f32).data(), ToDouble(in.dout).data(), dq.data(), dk.data(),
                         dv.data(), c.batch, c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window);
  EXPECT_TRUE(Close("attention dq", ToDouble(d_dq.Download()), dq, kBF16Tolerance, c.head_dim));
  EXPECT_TRUE(Close("attention dk", ToDouble(d_dk.Download()), dk, kBF16Tolerance, c.head_dim));
  EXPECT_TRUE(Close("attention dv", ToDouble(d_dv.Download()), dv, kBF16Tolerance, c.head_dim));
}

TEST_P(CudaAttentionTest, RepeatedRunsAreBitIdentical) {
  const AttentionCase c = GetParam();
  const Inputs in = MakeInputs(c);
  DeviceBuffer<uint16_t> d_q(in.q), d_k(in.k), d_v(in.v), d_dout(in.dout);
  DeviceBuffer<uint16_t> d_out(in.q.size()), d_dq(in.q.size()), d_dk(in.k.size()),
      d_dv(in.v.size());
  DeviceBuffer<float> d_lse(c.batch * c.heads * c.seq_len);
  DeviceBuffer<float> d_scratch(cuda::AttentionBackwardScratchSize(c.batch, c.seq_len, c.heads));
  std::vector<std::vector<uint16_t>> runs;
  for (int run = 0; run < 2; ++run) {
    ASSERT_EQ(
        cuda::AttentionForward(d_q.get(), d_k.get(), d_v.get(), d_out.get(), d_lse.get(), c.batch,
                               c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window, nullptr),
        cudaSuccess);
    ASSERT_EQ(cuda::AttentionBackward(d_q.get(), d_k.get(), d_v.get(), d_out.get(), d_lse.get(),
                                      d_dout.get(), d_dq.get(), d_dk.get(), d_dv.get(), c.batch,
                                      c.seq_len, c.heads, c.kv_heads, c.head_dim, c.window,
                                      d_scratch.get(), nullptr),
              cudaSuccess);
    runs.push_back(d_out.Download());
    runs.push_back(d_dq.Download());
    runs.push_back(d_dk.Download());
    runs.push_back(d_dv.Download());
    d_out.Poison();
    d_dq.Poison();
    d_dk.Poison();
    d_dv.Poison();
  }
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(runs[i], runs[i + 4]) << "output " << i;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionTest,
    ::testing::Values(AttentionCase{2, 100, 4, 2, 64, 0},    // GQA 2, T not a tile multiple.
                      AttentionCase{1, 70, 2, 1, 128, 0},    // The LLaMA head size, GQA 2.
                      AttentionCase{1, 129, 6, 2, 40, 0},    // D = 40, GQA 3.
                      AttentionCase{2, 90, 4, 4, 32, 16},    // Plain MHA, window < tile.
                      AttentionCase{1, 200, 4, 1, 128, 50},  // GQA 4, window > tile.
                      // Window 34: for each key tile the last query that sees
                      // it starts a query tile (the dK/dV loop's bound).
                      AttentionCase{1, 160, 2, 1, 64, 34},
                      AttentionCase{1, 3, 2, 2, 64, 0}));  // Three tokens, one tile.

// Argument checks run before any CUDA call, so these hold without a device.
TEST(CudaAttentionArgumentsTest, UnsupportedShapesAreRejectedBeforeLaunch) {
  // Head size above the maximum, odd head size, heads not a multiple of
  // key/value heads.
  EXPECT_EQ(cuda::AttentionForward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 8, 2, 1,
                                   cuda::kMaxAttentionHeadDim + 2, 0, nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::AttentionForward(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 8, 2, 1, 63, 0,
                                   nullptr),
            cudaErrorInvalidValue);
  EXPECT_EQ(cuda::AttentionBackward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                    nullptr, nullptr, 1, 8, 3, 2, 64, 0, nullptr, nullptr),
            cudaErrorInvalidValue);
  // A misaligned pointer (bf16 pairs are read as 32-bit words).
  alignas(4) static uint16_t storage[4];
  EXPECT_EQ(cuda::AttentionForward(storage + 1, storage, storage, storage, nullptr, 1, 1, 1, 1, 2,
                                   0, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace llamapro
