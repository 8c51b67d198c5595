#include "exec/backends/cuda/infra/lt_gemm.h"

#include <cstdint>

#include <cublas_api.h>

#include "exec/backends/cuda/infra/cuda_check.h"

namespace tandem::cuda {

LtError::LtError(cublasStatus_t status, const std::string& what) : std::runtime_error(what), status_(status) {}

namespace {

const char* status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_?";
  }
}

template <class T>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value, const char* what) {
  check_lt(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), what);
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("lt_fp8_gemm: " + what);
}

int32_t lt_mode(ScaleMode m) {
  return static_cast<int32_t>(m == ScaleMode::vec128 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F
                                                     : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F);
}

}  // namespace

void check_lt(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw LtError(status, std::string(what) + ": " + status_name(status) + ": " + cublasGetStatusString(status));
}

std::size_t cublaslt_version() { return cublasLtGetVersion(); }

struct LtFp8Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;  // cuBLAS's A (= our b), B (= our a), C = D
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

LtFp8Gemm::LtFp8Gemm(std::size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  check_lt(cublasLtCreate(&handle_), "cublasLtCreate");
  if (workspace_bytes_ > 0) {
    const cudaError_t err = cudaMalloc(&workspace_, workspace_bytes_);  // cudaMalloc: 256-B aligned
    if (err != cudaSuccess) {
      cublasLtDestroy(handle_);
      check(err, "cudaMalloc (cuBLASLt workspace)");
    }
  }
}

LtFp8Gemm::~LtFp8Gemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

std::size_t LtFp8Gemm::cached_shapes() const { return plans_.size(); }

LtFp8Gemm::Plan& LtFp8Gemm::plan_for(int m, int n, int k, ScaleMode b_mode, const LtGemmOptions& opts) {
  const Key key{m, n, k, static_cast<int>(b_mode), static_cast<int>(opts.out), opts.sm_count_target};
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;

  auto p = std::make_unique<Plan>();
  check_lt(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T, "TRANSA");
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N, "TRANSB");
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, lt_mode(b_mode), "A_SCALE_MODE");
  set_desc(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, lt_mode(ScaleMode::vec128), "B_SCALE_MODE");
  if (opts.sm_count_target > 0)
    set_desc(p->desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, static_cast<int32_t>(opts.sm_count_target),
             "SM_COUNT_TARGET");

  const cudaDataType_t out = opts.out == OutType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
  // cuBLAS: m = N (rows of D col-major), n = M.
  check_lt(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8F_E4M3, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k),
           "layout A");
  check_lt(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8F_E4M3, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k),
           "layout B");
  check_lt(cublasLtMatrixLayoutCreate(&p->d, out, static_cast<uint64_t>(n), static_cast<uint64_t>(m), n), "layout D");

  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &workspace_bytes_, sizeof(workspace_bytes_));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(handle_, p->desc, p->a, p->b, p->d, p->d, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  check_lt(st, "cublasLtMatmulAlgoGetHeuristic");
  last_heuristic_results_ = found;
  if (found == 0)
    throw LtError(CUBLAS_STATUS_NOT_SUPPORTED,
                  "cublasLtMatmulAlgoGetHeuristic: no algorithm for FP8 block-scaled GEMM M=" + std::to_string(m) +
                      " N=" + std::to_string(n) + " K=" + std::to_string(k));
  p->algo = result.algo;
  Plan& ref = *p;
  plans_.emplace(key, std::move(p));
  return ref;
}

void LtFp8Gemm::gemm(const Fp8Operand& a, const Fp8Operand& b, void* d, const LtGemmOptions& opts,
                     cudaStream_t stream) {
  require(a.mode == ScaleMode::vec128, "operand a must be VEC128 (1x128 tiles)");
  require(a.k == b.k, "a.k (" + std::to_string(a.k) + ") != b.k (" + std::to_string(b.k) + ")");
  const int m = a.rows, n = b.rows, k = a.k;
  if (m == 0 || n == 0) return;
  require(m > 0 && n > 0 && k > 0, "negative or zero shape");
  require(m % 4 == 0 && n % 4 == 0, "M and N must be multiples of 4 (M=" + std::to_string(m) +
                                         ", N=" + std::to_string(n) + ")");
  require(k % 16 == 0, "K must be a multiple of 16 (K=" + std::to_string(k) + ")");
  require(aligned16(a.data) && aligned16(b.data) && aligned16(d) && aligned16(a.scales) && aligned16(b.scales),
          "device pointers (data, scales, d) must be 16-byte aligned");

  Plan& p = plan_for(m, n, k, b.mode, opts);
  // The scale pointers change per call (per expert): set them on the cached descriptor.
  set_desc(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(b.scales), "A_SCALE_POINTER");
  set_desc(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(a.scales), "B_SCALE_POINTER");
  const float alpha = 1.0f, beta = 0.0f;
  check_lt(cublasLtMatmul(handle_, p.desc, &alpha, b.data, p.a, a.data, p.b, &beta, d, p.d, d, p.d, &p.algo,
                          workspace_, workspace_bytes_, stream),
           "cublasLtMatmul");
}

void LtFp8Gemm::grouped(const std::vector<Fp8Operand>& a, const std::vector<Fp8Operand>& b,
                        const std::vector<void*>& d, const LtGemmOptions& opts, cudaStream_t stream) {
  require(a.size() == b.size() && a.size() == d.size(), "grouped: a, b and d must have one entry per group");
  for (std::size_t g = 0; g < a.size(); ++g) {
    if (a[g].rows == 0) continue;
    gemm(a[g], b[g], d[g], opts, stream);
  }
}

}  // namespace tandem::cuda
