#include "kernels/cpu/blas.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/check.h"

namespace llamapro::cpu {
namespace {

// cblas.h's values, so this file needs no BLAS header.
constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

using CblasSgemmFn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*,
                              int, float, float*, int);
using DnnlSgemmFn = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t);
using SetThreadsFn = void (*)(int);
using StringFn = char* (*)();

struct DnnlVersion {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
};
using DnnlVersionFn = const DnnlVersion* (*)();

struct Backend {
  DnnlSgemmFn dnnl_sgemm = nullptr;
  CblasSgemmFn cblas_sgemm = nullptr;
  SetThreadsFn set_threads = nullptr;  // openblas_set_num_threads or omp_set_num_threads.
  std::string description;
};

bool HasAvx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

bool LoadOneDnn(Backend* backend) {
  void* dnnl = nullptr;
  for (const char* name : {LLAMAPRO_DNNL_PATH, "libdnnl.so.2", "libdnnl.so.3"}) {
    if (name[0] != '\0' && (dnnl = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  }
  if (dnnl == nullptr) return false;
  backend->dnnl_sgemm = reinterpret_cast<DnnlSgemmFn>(dlsym(dnnl, "dnnl_sgemm"));
  // oneDNN runs on OpenMP here; its thread count is the caller's OpenMP setting.
  void* gomp = dlopen("libgomp.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (gomp != nullptr) {
    backend->set_threads = reinterpret_cast<SetThreadsFn>(dlsym(gomp, "omp_set_num_threads"));
  }
  if (backend->dnnl_sgemm == nullptr || backend->set_threads == nullptr) return false;
  auto version = reinterpret_cast<DnnlVersionFn>(dlsym(dnnl, "dnnl_version"));
  backend->description = "oneDNN";
  if (version != nullptr) {
    const DnnlVersion* v = version();
    absl::StrAppend(&backend->description, " ", v->major, ".", v->minor, ".", v->patch);
  }
  absl::StrAppend(&backend->description, " (dnnl_sgemm)");
  return true;
}

bool LoadOpenBlas(Backend* backend) {
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr && HasAvx512()) {
    setenv("OPENBLAS_CORETYPE", "SkylakeX", /*overwrite=*/0);
  }
  void* blas = nullptr;
  for (const char* name : {LLAMAPRO_OPENBLAS_PATH, "libopenblas.so.0", "libopenblas.so"}) {
    if (name[0] != '\0' && (blas = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  }
  if (blas == nullptr) return false;
  backend->cblas_sgemm = reinterpret_cast<CblasSgemmFn>(dlsym(blas, "cblas_sgemm"));
  backend->set_threads = reinterpret_cast<SetThreadsFn>(dlsym(blas, "openblas_set_num_threads"));
  if (backend->cblas_sgemm == nullptr || backend->set_threads == nullptr) return false;
  auto config = reinterpret_cast<StringFn>(dlsym(blas, "openblas_get_config"));
  auto corename = reinterpret_cast<StringFn>(dlsym(blas, "openblas_get_corename"));
  backend->description = config != nullptr ? config() : "OpenBLAS";
  if (corename != nullptr) absl::StrAppend(&backend->description, " (kernels: ", corename(), ")");
  return true;
}

const Backend& Get() {
  static const Backend* backend = [] {
    auto* b = new Backend();
    const char* choice = std::getenv("LLAMAPRO_BLAS");
    const std::string want = choice != nullptr ? choice : "";
    if (!want.empty() && want != "onednn" && want != "openblas") {
      std::fprintf(stderr, "llamapro: LLAMAPRO_BLAS=%s: use onednn or openblas\n", choice);
      std::abort();
    }
    bool loaded = false;
    if (want != "openblas") loaded = LoadOneDnn(b);
    if (!loaded && want == "onednn") {
      std::fprintf(stderr, "llamapro: LLAMAPRO_BLAS=onednn but libdnnl cannot be loaded: %s\n",
                   dlerror());
      std::abort();
    }
    if (!loaded && !LoadOpenBlas(b)) {
      std::fprintf(stderr,
                   "llamapro: no BLAS: neither oneDNN (libdnnl.so.2) nor OpenBLAS (%s) loads "
                   "(install libdnnl2 or libopenblas0-pthread): %s\n",
                   LLAMAPRO_OPENBLAS_PATH, dlerror());
      std::abort();
    }
    return b;
  }();
  return *backend;
}

}  // namespace

void Sgemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  const Backend& backend = Get();
  if (backend.dnnl_sgemm != nullptr) {
    const int status = backend.dnnl_sgemm(transpose_a ? 'T' : 'N', transpose_b ? 'T' : 'N', m, n, k,
                                          alpha, a, lda, b, ldb, beta, c, ldc);
    LP_CHECK(status == 0, "dnnl_sgemm failed");
    return;
  }
  backend.cblas_sgemm(kRowMajor, transpose_a ? kTrans : kNoTrans, transpose_b ? kTrans : kNoTrans,
                      static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), alpha, a,
                      static_cast<int>(lda), b, static_cast<int>(ldb), beta, c,
                      static_cast<int>(ldc));
}

void SetBlasThreads(int threads) { Get().set_threads(threads < 1 ? 1 : threads); }

std::string BlasDescription() { return Get().description; }

}  // namespace llamapro::cpu
