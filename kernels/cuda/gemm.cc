#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <dlfcn.h>

#include <string>
#include <type_traits>
#include <utility>

namespace llamapro::cuda {
namespace {

// cuBLASLt, loaded with dlopen at the first Gemm::Create rather than linked:
// its 94 KiB of static thread-local storage, added to every thread's stack,
// made pthread_create fail (EINVAL) for libraries that create threads with
// small fixed stacks (civetweb, behind the worker's /metrics), and a binary
// built with CUDA then also starts on machines without the CUDA libraries.
struct CublasLtApi {
  decltype(&::cublasLtCreate) Create = nullptr;
  decltype(&::cublasLtDestroy) Destroy = nullptr;
  decltype(&::cublasLtGetStatusName) GetStatusName = nullptr;
  decltype(&::cublasLtGetStatusString) GetStatusString = nullptr;
  decltype(&::cublasLtMatmul) Matmul = nullptr;
  decltype(&::cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic = nullptr;
  decltype(&::cublasLtMatmulDescCreate) MatmulDescCreate = nullptr;
  decltype(&::cublasLtMatmulDescDestroy) MatmulDescDestroy = nullptr;
  decltype(&::cublasLtMatmulDescSetAttribute) MatmulDescSetAttribute = nullptr;
  decltype(&::cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate = nullptr;
  decltype(&::cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy = nullptr;
  decltype(&::cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute = nullptr;
  decltype(&::cublasLtMatrixLayoutCreate) MatrixLayoutCreate = nullptr;
  decltype(&::cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy = nullptr;
};

const CublasLtApi* LoadCublasLt(std::string* error) {
  static std::string load_error;
  static const CublasLtApi* const kApi = []() -> const CublasLtApi* {
    void* library = nullptr;
    for (const char* name : {"libcublasLt.so.13", "libcublasLt.so"}) {
      if ((library = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    }
    if (library == nullptr) {
      const char* why = dlerror();
      load_error = std::string("cannot load cuBLASLt (libcublasLt.so.13): ") +
                   (why != nullptr ? why : "not found") +
                   " (install the CUDA 13 cuBLAS libraries or add them to LD_LIBRARY_PATH)";
      return nullptr;
    }
    auto* loaded = new CublasLtApi();
    auto load = [&](auto* slot, const char* symbol) {
      *slot = reinterpret_cast<std::remove_pointer_t<decltype(slot)>>(dlsym(library, symbol));
      if (*slot == nullptr) load_error = std::string("libcublasLt.so.13 has no ") + symbol;
      return *slot != nullptr;
    };
    if (!(load(&loaded->Create, "cublasLtCreate") && load(&loaded->Destroy, "cublasLtDestroy") &&
          load(&loaded->GetStatusName, "cublasLtGetStatusName") &&
          load(&loaded->GetStatusString, "cublasLtGetStatusString") &&
          load(&loaded->Matmul, "cublasLtMatmul") &&
          load(&loaded->MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic") &&
          load(&loaded->MatmulDescCreate, "cublasLtMatmulDescCreate") &&
          load(&loaded->MatmulDescDestroy, "cublasLtMatmulDescDestroy") &&
          load(&loaded->MatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute") &&
          load(&loaded->MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate") &&
          load(&loaded->MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy") &&
          load(&loaded->MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute") &&
          load(&loaded->MatrixLayoutCreate, "cublasLtMatrixLayoutCreate") &&
          load(&loaded->MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy"))) {
      delete loaded;
      return nullptr;
    }
    return loaded;
  }();
  if (kApi == nullptr && error != nullptr) *error = load_error;
  return kApi;
}

// The loaded API; only called once Gemm::Create has loaded it.
const CublasLtApi& Lt() { return *LoadCublasLt(nullptr); }

}  // namespace

namespace {

std::string Describe(const GemmArgs& args) {
  return std::string("m=") + std::to_string(args.m) + " n=" + std::to_string(args.n) +
         " k=" + std::to_string(args.k) + " lda=" + std::to_string(args.lda) +
         " ldb=" + std::to_string(args.ldb) + " ldc=" + std::to_string(args.ldc) +
         (args.trans_a ? " trans_a" : "") + (args.trans_b ? " trans_b" : "") +
         (args.c_type == GemmOutput::kF32 ? " C fp32" : " C bf16");
}

std::string CublasMessage(cublasStatus_t status, const char* expr, const char* file, int line) {
  return std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " +
         Lt().GetStatusName(status) + " (" + Lt().GetStatusString(status) + ")";
}

// The largest power of two (at most 256) dividing the address: cuBLASLt's
// heuristic otherwise assumes 256-byte aligned buffers, and row chunks of a
// larger matrix are not.
int Alignment(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  int alignment = 1;
  while (alignment < 256 && address % (2 * static_cast<uintptr_t>(alignment)) == 0) alignment *= 2;
  return alignment;
}

}  // namespace

// Returns a CudaStatus naming the call when a cuBLASLt call fails.
#define LP_CUBLASLT_RETURN_IF_ERROR(expr)                                                    \
  do {                                                                                       \
    const cublasStatus_t lp_cublas_status_ = (expr);                                         \
    if (lp_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                        \
      return CudaStatus::Error(CublasMessage(lp_cublas_status_, #expr, __FILE__, __LINE__)); \
    }                                                                                        \
  } while (false)

#define LP_CUDA_RETURN_IF_ERROR(expr)                                                         \
  do {                                                                                        \
    const cudaError_t lp_cuda_status_ = (expr);                                               \
    if (lp_cuda_status_ != cudaSuccess) {                                                     \
      return CudaStatus::Error(CudaErrorMessage(lp_cuda_status_, #expr, __FILE__, __LINE__)); \
    }                                                                                         \
  } while (false)

struct Gemm::CachedPlan {
  cublasLtMatmulDesc_t operation = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // cuBLASLt's A: our B (see FindPlan).
  cublasLtMatrixLayout_t b = nullptr;  // cuBLASLt's B: our A.
  cublasLtMatrixLayout_t c = nullptr;
  cublasLtMatmulAlgo_t algo{};

  CachedPlan() = default;
  CachedPlan(const CachedPlan&) = delete;
  CachedPlan& operator=(const CachedPlan&) = delete;
  // Destruction errors have no one to report to; the descriptors are host
  // memory.
  ~CachedPlan() {
    if (c != nullptr) Lt().MatrixLayoutDestroy(c);
    if (b != nullptr) Lt().MatrixLayoutDestroy(b);
    if (a != nullptr) Lt().MatrixLayoutDestroy(a);
    if (operation != nullptr) Lt().MatmulDescDestroy(operation);
  }
};

CudaStatus Gemm::Create(size_t workspace_bytes, std::unique_ptr<Gemm>* gemm) {
  std::string load_error;
  if (LoadCublasLt(&load_error) == nullptr) return CudaStatus::Error(load_error);
  std::unique_ptr<Gemm> created(new Gemm());
  cublasLtHandle_t handle = nullptr;
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().Create(&handle));
  created->handle_ = handle;
  if (workspace_bytes > 0) {
    LP_CUDA_RETURN_IF_ERROR(cudaMalloc(&created->workspace_, workspace_bytes));
    created->workspace_bytes_ = workspace_bytes;
  }
  *gemm = std::move(created);
  return CudaStatus();
}

Gemm::~Gemm() {
  plans_.clear();
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) Lt().Destroy(static_cast<cublasLtHandle_t>(handle_));
}

CudaStatus Gemm::Plan(const GemmArgs& args) {
  const CachedPlan* plan = nullptr;
  return FindPlan(args, &plan);
}

// cuBLASLt is column-major. A row-major X[r, c] with leading dimension ld is
// the column-major X^T [c, r] with the same ld, so the row-major
// C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T:
// cuBLASLt's A is our B and its B is our A, each transposed exactly when ours
// is, and its (m, n) is our (n, m).
CudaStatus Gemm::FindPlan(const GemmArgs& args, const CachedPlan** plan) {
  if (args.m <= 0 || args.n <= 0 || args.k <= 0 || args.a == nullptr || args.b == nullptr ||
      args.c == nullptr || args.lda < (args.trans_a ? args.m : args.k) ||
      args.ldb < (args.trans_b ? args.k : args.n) || args.ldc < args.n) {
    return CudaStatus::Error(
        "Gemm: invalid problem " + Describe(args) +
        " (sizes must be positive, pointers set, lda >= " + (args.trans_a ? "m" : "k") +
        ", ldb >= " + (args.trans_b ? "k" : "n") + ", ldc >= n)");
  }
  const Key key(args.trans_a, args.trans_b, args.m, args.n, args.k, args.lda, args.ldb, args.ldc,
                static_cast<int>(args.c_type), Alignment(args.a), Alignment(args.b),
                Alignment(args.c));
  if (auto it = plans_.find(key); it != plans_.end()) {
    *plan = it->second.get();
    return CudaStatus();
  }

  auto created = std::make_unique<CachedPlan>();
  const cudaDataType_t c_type = args.c_type == GemmOutput::kF32 ? CUDA_R_32F : CUDA_R_16BF;
  LP_CUBLASLT_RETURN_IF_ERROR(
      Lt().MatmulDescCreate(&created->operation, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = args.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = args.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulDescSetAttribute(
      created->operation, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulDescSetAttribute(
      created->operation, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  // Stored (before op) column-major shapes: our B is [k, n] row-major, i.e.
  // [n, k] column-major ([k, n] with trans_b); our A is [k, m] column-major
  // ([m, k] with trans_a); C is [n, m].
  const uint64_t a_rows = args.trans_b ? args.k : args.n;
  const uint64_t a_cols = args.trans_b ? args.n : args.k;
  const uint64_t b_rows = args.trans_a ? args.m : args.k;
  const uint64_t b_cols = args.trans_a ? args.k : args.m;
  LP_CUBLASLT_RETURN_IF_ERROR(
      Lt().MatrixLayoutCreate(&created->a, CUDA_R_16BF, a_rows, a_cols, args.ldb));
  LP_CUBLASLT_RETURN_IF_ERROR(
      Lt().MatrixLayoutCreate(&created->b, CUDA_R_16BF, b_rows, b_cols, args.lda));
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatrixLayoutCreate(
      &created->c, c_type, static_cast<uint64_t>(args.n), static_cast<uint64_t>(args.m), args.ldc));

  cublasLtMatmulPreference_t preference = nullptr;
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulPreferenceCreate(&preference));
  // Released on every path below.
  struct PreferenceGuard {
    cublasLtMatmulPreference_t p;
    ~PreferenceGuard() { Lt().MatmulPreferenceDestroy(p); }
  } guard{preference};
  const uint64_t workspace = workspace_bytes_;
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
  const uint32_t align_a = static_cast<uint32_t>(std::get<10>(key));  // cuBLASLt's A: our B.
  const uint32_t align_b = static_cast<uint32_t>(std::get<9>(key));
  const uint32_t align_c = static_cast<uint32_t>(std::get<11>(key));
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));

  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  LP_CUBLASLT_RETURN_IF_ERROR(Lt().MatmulAlgoGetHeuristic(
      static_cast<cublasLtHandle_t>(handle_), created->operation, created->a, created->b,
      created->c, created->c, preference, 1, &result, &returned));
  if (returned == 0 || result.state != CUBLAS_STATUS_SUCCESS) {
    return CudaStatus::Error(
        "cublasLtMatmulAlgoGetHeuristic found no algorithm for " + Describe(args) +
        " (alignments a/b/c " + std::to_string(std::get<9>(key)) + "/" +
        std::to_string(std::get<10>(key)) + "/" + std::to_string(std::get<11>(key)) + " bytes)");
  }
  created->algo = result.algo;
  *plan = created.get();
  plans_.emplace(key, std::move(created));
  return CudaStatus();
}

CudaStatus Gemm::Run(const GemmArgs& args, cudaStream_t stream) {
  const CachedPlan* plan = nullptr;
  if (CudaStatus status = FindPlan(args, &plan); !status.ok()) return status;
  // cuBLASLt's A is our B and its B our A (see FindPlan).
  const cublasStatus_t status =
      Lt().Matmul(static_cast<cublasLtHandle_t>(handle_), plan->operation, &args.alpha, args.b,
                  plan->a, args.a, plan->b, &args.beta, args.c, plan->c, args.c, plan->c,
                  &plan->algo, workspace_, workspace_bytes_, stream);
  if (status != CUBLAS_STATUS_SUCCESS) {
    return CudaStatus::Error(CublasMessage(status, "cublasLtMatmul", __FILE__, __LINE__) + " for " +
                             Describe(args));
  }
  return CudaStatus();
}

}  // namespace llamapro::cuda
