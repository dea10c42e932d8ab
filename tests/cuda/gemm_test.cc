// cuBLASLt GEMMs (kernels/cuda/gemm.h) against a double-precision loop on
// the same bf16 inputs: every transpose combination, bf16 and fp32 outputs
// (fp32 with beta = 1, the weight-gradient accumulation), padded leading
// dimensions, odd sizes, a row-offset pointer that is not 256-byte aligned,
// and the plan cache. Skipped where no CUDA device is usable. Needs
// libcublasLt at run time (on the GPU machine, from the Python wheels:
// docs/gpu.md).
#include "kernels/cuda/gemm.h"

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cuda/cuda_test_util.h"

namespace llamapro {
namespace {

using cuda_test::Close;
using cuda_test::DeviceBuffer;
using cuda_test::RandomBF16;
using cuda_test::ToDouble;

struct GemmCase {
  bool trans_a, trans_b;
  int64_t m, n, k;
  int64_t pad;  // Added to every minimal leading dimension.
  cuda::GemmOutput c_type;
};

std::ostream& operator<<(std::ostream& os, const GemmCase& c) {
  return os << (c.trans_a ? "T" : "N") << (c.trans_b ? "T" : "N") << " m=" << c.m << " n=" << c.n
            << " k=" << c.k << " pad=" << c.pad
            << (c.c_type == cuda::GemmOutput::kF32 ? " fp32" : " bf16");
}

class CudaGemmTest : public cuda_test::CudaTest {
 protected:
  void SetUp() override {
    cuda_test::CudaTest::SetUp();
    if (IsSkipped()) return;
    const cuda::CudaStatus status = cuda::Gemm::Create(cuda::Gemm::kDefaultWorkspaceBytes, &gemm_);
    ASSERT_TRUE(status.ok()) << status.message();
  }
  std::unique_ptr<cuda::Gemm> gemm_;
};

class CudaGemmShapeTest : public CudaGemmTest, public ::testing::WithParamInterface<GemmCase> {};

// C = alpha op(A) op(B) + beta C0 in double, row-major as gemm.h describes.
std::vector<double> ReferenceGemm(const GemmCase& c, const std::vector<double>& a, int64_t lda,
                                  const std::vector<double>& b, int64_t ldb,
                                  const std::vector<double>& c0, int64_t ldc, double alpha,
                                  double beta) {
  std::vector<double> out(c.m * c.n);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < c.k; ++p) {
        const double av = c.trans_a ? a[p * lda + i] : a[i * lda + p];
        const double bv = c.trans_b ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
      }
      out[i * c.n + j] = alpha * acc + beta * c0[i * ldc + j];
    }
  }
  return out;
}

// The m x n block of a matrix with leading dimension ld.
template <typename T>
std::vector<double> Block(const std::vector<T>& values, int64_t m, int64_t n, int64_t ld) {
  std::vector<double> out(m * n);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (std::is_same_v<T, uint16_t>) {
        out[i * n + j] = BF16ToFloat(values[i * ld + j]);
      } else {
        out[i * n + j] = values[i * ld + j];
      }
    }
  }
  return out;
}

TEST_P(CudaGemmShapeTest, ProductMatchesTheReference) {
  const GemmCase c = GetParam();
  const int64_t lda = (c.trans_a ? c.m : c.k) + c.pad;
  const int64_t ldb = (c.trans_b ? c.k : c.n) + c.pad;
  const int64_t ldc = c.n + c.pad;
  const int64_t a_rows = c.trans_a ? c.k : c.m;
  const int64_t b_rows = c.trans_b ? c.n : c.k;
  std::mt19937 rng(static_cast<uint32_t>(c.m * 1000 + c.n * 10 + c.k + c.pad));
  const std::vector<uint16_t> a = RandomBF16(a_rows * lda, &rng);
  const std::vector<uint16_t> b = RandomBF16(b_rows * ldb, &rng);
  DeviceBuffer<uint16_t> d_a(a), d_b(b);

  cuda::GemmArgs args;
  args.trans_a = c.trans_a;
  args.trans_b = c.trans_b;
  args.m = c.m;
  args.n = c.n;
  args.k = c.k;
  args.a = d_a.get();
  args.lda = lda;
  args.b = d_b.get();
  args.ldb = ldb;
  args.ldc = ldc;
  args.c_type = c.c_type;
  const std::vector<double> a_d = ToDouble(a), b_d = ToDouble(b);
  if (c.c_type == cuda::GemmOutput::kBF16) {
    DeviceBuffer<uint16_t> d_c(c.m * ldc);  // Poisoned: beta = 0 must not read it.
    args.c = d_c.get();
    args.alpha = 0.5f;
    const cuda::CudaStatus status = gemm_->Run(args, nullptr);
    ASSERT_TRUE(status.ok()) << status.message();
    const std::vector<double> zeros(c.m * ldc, 0.0);
    EXPECT_TRUE(Close("gemm bf16 C", Block(d_c.Download(), c.m, c.n, ldc),
                      ReferenceGemm(c, a_d, lda, b_d, ldb, zeros, ldc, 0.5, 0.0),
                      cuda_test::kBF16Tolerance));
  } else {
    // Accumulation into an fp32 gradient: C = A B + C0.
    const std::vector<float> c0 = cuda_test::RandomF32(c.m * ldc, &rng, -1.0f, 1.0f);
    DeviceBuffer<float> d_c(c0);
    args.c = d_c.get();
    args.beta = 1.0f;
    const cuda::CudaStatus status = gemm_->Run(args, nullptr);
    ASSERT_TRUE(status.ok()) << status.message();
    const std::vector<float> out = d_c.Download();
    EXPECT_TRUE(Close("gemm fp32 C += A B", Block(out, c.m, c.n, ldc),
                      ReferenceGemm(c, a_d, lda, b_d, ldb, ToDouble(c0), ldc, 1.0, 1.0),
                      cuda_test::kF32Tolerance));
    // Padding columns of C are left alone.
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t j = c.n; j < ldc; ++j) ASSERT_EQ(out[i * ldc + j], c0[i * ldc + j]);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaGemmShapeTest,
    ::testing::Values(
        // The model's three products, bf16 out and fp32 accumulate.
        GemmCase{false, true, 96, 80, 136, 0, cuda::GemmOutput::kBF16},   // y = x W^T
        GemmCase{false, false, 96, 136, 80, 0, cuda::GemmOutput::kBF16},  // dx = dy W
        GemmCase{true, false, 80, 136, 96, 0, cuda::GemmOutput::kF32},    // dW += dy^T x
        GemmCase{false, true, 96, 80, 136, 0, cuda::GemmOutput::kF32},
        GemmCase{true, true, 64, 48, 256, 0, cuda::GemmOutput::kBF16},
        GemmCase{true, true, 64, 48, 256, 0, cuda::GemmOutput::kF32},
        // Padded leading dimensions.
        GemmCase{false, true, 128, 64, 512, 8, cuda::GemmOutput::kBF16},
        GemmCase{true, false, 40, 72, 1000, 16, cuda::GemmOutput::kF32},
        // Odd sizes and leading dimensions (2-byte alignment only).
        GemmCase{false, true, 67, 45, 131, 0, cuda::GemmOutput::kBF16},
        GemmCase{true, false, 33, 17, 75, 1, cuda::GemmOutput::kF32}));

TEST_F(CudaGemmTest, RowOffsetOperandsAndThePlanCache) {
  // y[rows, out] = x[rows, in] W^T for a chunk of rows starting at row 3 of
  // x: the pointer is 2 * 3 * in bytes past an allocation (not 256-aligned).
  const int64_t total_rows = 64, rows = 29, in = 200, out = 96, first = 3;
  std::mt19937 rng(31);
  const std::vector<uint16_t> x = RandomBF16(total_rows * in, &rng);
  const std::vector<uint16_t> w = RandomBF16(out * in, &rng);
  const std::vector<double> x_d = ToDouble(x);
  DeviceBuffer<uint16_t> d_x(x), d_w(w), d_y(rows * out);
  cuda::GemmArgs args;
  args.trans_b = true;
  args.m = rows;
  args.n = out;
  args.k = in;
  args.a = d_x.get() + first * in;
  args.lda = in;
  args.b = d_w.get();
  args.ldb = in;
  args.c = d_y.get();
  args.ldc = out;
  ASSERT_EQ(gemm_->cached_plans(), 0u);
  for (int run = 0; run < 2; ++run) {
    d_y.Poison();
    const cuda::CudaStatus status = gemm_->Run(args, nullptr);
    ASSERT_TRUE(status.ok()) << status.message();
    const GemmCase c{false, true, rows, out, in, 0, cuda::GemmOutput::kBF16};
    const std::vector<double> x_chunk(x_d.begin() + first * in, x_d.begin() + (first + rows) * in);
    EXPECT_TRUE(Close("gemm row chunk", ToDouble(d_y.Download()),
                      ReferenceGemm(c, x_chunk, in, ToDouble(w), in,
                                    std::vector<double>(rows * out, 0.0), out, 1.0, 0.0),
                      cuda_test::kBF16Tolerance));
    EXPECT_EQ(gemm_->cached_plans(), 1u) << "the same problem is planned once";
  }
  args.a = d_x.get();  // Another alignment: another plan.
  ASSERT_TRUE(gemm_->Plan(args).ok());
  EXPECT_EQ(gemm_->cached_plans(), 2u);
}

TEST_F(CudaGemmTest, InvalidProblemsAreReportedByName) {
  cuda::GemmArgs args;
  args.m = 4;
  args.n = 4;
  args.k = 4;
  DeviceBuffer<uint16_t> d(16);
  args.a = d.get();
  args.b = d.get();
  args.c = d.get();
  args.lda = 3;  // < k
  args.ldb = 4;
  args.ldc = 4;
  const cuda::CudaStatus status = gemm_->Run(args, nullptr);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("lda=3"), std::string::npos) << status.message();
  EXPECT_EQ(gemm_->cached_plans(), 0u);
}

}  // namespace
}  // namespace llamapro
