// The GEMM behind the CPU kernels, chosen at first use:
//   * oneDNN (dnnl_sgemm), when its library is installed: its JIT kernels use
//     the widest vector ISA the CPU has (AVX-512 on AMD Zen 4), about twice
//     the per-core throughput of OpenBLAS 0.3.21's AVX2 kernels there;
//   * otherwise OpenBLAS (cblas_sgemm). On CPUs with AVX-512 its SkylakeX
//     kernels are selected unless OPENBLAS_CORETYPE is set.
// LLAMAPRO_BLAS=onednn|openblas forces one. Both libraries are loaded with
// dlopen, so neither is a link-time dependency. Thread-safe.
#ifndef LLAMAPRO_KERNELS_CPU_BLAS_H_
#define LLAMAPRO_KERNELS_CPU_BLAS_H_

#include <cstdint>
#include <string>

namespace llamapro::cpu {

// Row-major single-precision GEMM: C = alpha op(A) op(B) + beta C, with
// op(A) [m, k], op(B) [k, n], C [m, n] and leading dimensions as in cblas.
// Deterministic: the same call on the same machine and thread setting gives
// the same bits.
void Sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

// Threads the GEMMs called from this thread may use (>= 1). For OpenBLAS a
// process-wide setting; for oneDNN (OpenMP) per calling thread.
void SetBlasThreads(int threads);

// "oneDNN 2.6.3 (dnnl_sgemm)" or "OpenBLAS 0.3.21 ... (kernels: SkylakeX)".
std::string BlasDescription();

}  // namespace llamapro::cpu

#endif  // LLAMAPRO_KERNELS_CPU_BLAS_H_
