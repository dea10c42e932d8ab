// GEMMs through cuBLASLt: bf16 inputs, fp32 accumulation, bf16 or fp32
// output, in row-major terms (as the CPU's Sgemm and PyTorch's layouts):
//
//   C[m, n] = alpha * op(A) op(B) + beta * C
//
// op(A) is [m, k]: A is stored [m, k] (lda >= k), or [k, m] with trans_a
// (lda >= m); op(B) is [k, n]: B is stored [k, n] (ldb >= n), or [n, k] with
// trans_b (ldb >= k); C is [m, n] with ldc >= n. The model's products:
//   forward  y[N, out] = x[N, in] W[out, in]^T:  trans_b
//   backward dx[N, in] = dy[N, out] W:          no transposes
//            dW[out, in] += dy^T x:             trans_a, fp32 C, beta = 1
//
// A Gemm owns a cuBLASLt handle and a device workspace allocated once by
// Create (nothing is allocated on the device afterwards). The algorithm for
// each distinct problem (shape, transposes, leading dimensions, output dtype
// and the pointers' alignment) is chosen by cuBLASLt's heuristic the first
// time it is seen and cached with its descriptors; Plan() does that ahead of
// the step loop. Not thread-safe: one thread drives a Gemm. Linked against
// the shared libcublasLt (CUDA::cublasLt).
#ifndef LLAMAPRO_KERNELS_CUDA_GEMM_H_
#define LLAMAPRO_KERNELS_CUDA_GEMM_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "kernels/cuda/device.h"

namespace llamapro::cuda {

enum class GemmOutput { kBF16, kF32 };

struct GemmArgs {
  bool trans_a = false;
  bool trans_b = false;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  const uint16_t* a = nullptr;  // bf16, device.
  int64_t lda = 0;
  const uint16_t* b = nullptr;  // bf16, device.
  int64_t ldb = 0;
  void* c = nullptr;  // bf16 or fp32 (c_type), device; read when beta != 0.
  int64_t ldc = 0;
  GemmOutput c_type = GemmOutput::kBF16;
  float alpha = 1.0f;
  float beta = 0.0f;
};

class Gemm {
 public:
  // Recommended workspace for Hopper (cuBLAS's documentation).
  static constexpr size_t kDefaultWorkspaceBytes = size_t{32} << 20;

  // Creates the cuBLASLt handle and allocates `workspace_bytes` on the current
  // device. Errors name the failed call.
  static CudaStatus Create(size_t workspace_bytes, std::unique_ptr<Gemm>* gemm);

  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // Chooses and caches the algorithm for `args`' problem without running it.
  // Errors: invalid sizes (naming them), a failed cuBLASLt call (naming it),
  // or no algorithm for the problem.
  CudaStatus Plan(const GemmArgs& args);

  // Enqueues the product on `stream` (planning it first if needed). Does not
  // synchronize. Errors as Plan, or the failed cublasLtMatmul.
  CudaStatus Run(const GemmArgs& args, cudaStream_t stream);

  // Distinct problems planned so far.
  size_t cached_plans() const { return plans_.size(); }

 private:
  struct CachedPlan;
  // (trans_a, trans_b, m, n, k, lda, ldb, ldc, c_type, align a, align b, align c)
  using Key = std::tuple<bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int,
                         int, int>;

  Gemm() = default;
  CudaStatus FindPlan(const GemmArgs& args, const CachedPlan** plan);

  void* handle_ = nullptr;  // cublasLtHandle_t, kept opaque so this header needs no cuBLASLt.
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, std::unique_ptr<CachedPlan>> plans_;
};

}  // namespace llamapro::cuda

#endif  // LLAMAPRO_KERNELS_CUDA_GEMM_H_
