// cuBLASLt FP8 block-scaled GEMMs (DeepSeek-V3 recipe on Hopper), the GPU counterpart of
// exec/fp8/block_gemm.h:   d[M, N] (row-major) = a[M, K] · b[N, K]ᵀ,  both operands K-contiguous.
//
//   fprop / dgrad: a = activations or gradients, 1x128 tiles (VEC128), b = weights (or Wᵀ),
//                  128x128 blocks (BLK128x128)
//   wgrad:         a = dyᵀ, b = xᵀ, both columnwise 1x128 (VEC128 x VEC128), K = tokens
// Operands use exec/fp8's (= cuBLASLt's) scale layouts; see fp8_kernels.h.
//
// Mapping onto cuBLAS's column-major "TN" (the only FP8 layout on Hopper): cuBLAS A := b (K x N,
// ld K, TRANSA = T), cuBLAS B := a (K x M, ld K, TRANSB = N), D: N x M col-major, ld N, which is
// d[M, N] row-major. So cuBLAS's m = N, n = M; A's scale mode is b's mode, B's is VEC128.
// Requirements (cuBLAS docs, checked here and thrown as std::invalid_argument): M, N multiples of
// 4 (the row-major output's leading dimension must keep 16-B alignment), K a multiple of 16,
// device pointers 16-B aligned. cuBLAS allows BLK128x128 x VEC128 only with b as the 2-D operand.
// Compute type FP32, D BF16 or FP32, alpha 1, beta 0; no fast accumulation (not offered).
//
// Errors: cuBLAS failures throw LtError (status and cublasGetStatusString, which lives in
// libcublas); CUDA failures throw CudaError. cublasLtCreate fails without a GPU
// (CUBLAS_STATUS_NOT_INITIALIZED), so an LtFp8Gemm can only be constructed on a GPU machine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

namespace tandem::cuda {

class LtError : public std::runtime_error {
 public:
  LtError(cublasStatus_t status, const std::string& what);
  cublasStatus_t status() const { return status_; }

 private:
  cublasStatus_t status_;
};

// "<what>: CUBLAS_STATUS_...: <cublasGetStatusString>" unless status is CUBLAS_STATUS_SUCCESS.
void check_lt(cublasStatus_t status, const char* what);

enum class ScaleMode { vec128, blk128x128 };
enum class OutType { bf16, f32 };

// One FP8 operand on the device: E4M3 codes [rows, k] row-major plus its scales in the layout of
// `mode` (VEC128: ceil(k/128) * rows, M-major; BLK128x128: ceil(rows/128) * roundup(ceil(k/128), 4)).
struct Fp8Operand {
  const uint8_t* data = nullptr;
  const float* scales = nullptr;
  int rows = 0;
  int k = 0;
  ScaleMode mode = ScaleMode::vec128;
};

struct LtGemmOptions {
  OutType out = OutType::bf16;
  int sm_count_target = 0;  // > 0: CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET (SMs minus comm SMs); 0: all
};

// Holds the cuBLASLt handle, a workspace and, per shape, the descriptors and the heuristic's
// algorithm (so repeated GEMMs of one shape, e.g. the per-expert loop, query the heuristic once).
// Not thread-safe; one per stream/thread.
class LtFp8Gemm {
 public:
  explicit LtFp8Gemm(std::size_t workspace_bytes = std::size_t{32} << 20);
  ~LtFp8Gemm();
  LtFp8Gemm(const LtFp8Gemm&) = delete;
  LtFp8Gemm& operator=(const LtFp8Gemm&) = delete;

  // d (device, BF16 or FP32 per opts.out) [a.rows, b.rows] = a · bᵀ. a must be VEC128.
  void gemm(const Fp8Operand& a, const Fp8Operand& b, void* d, const LtGemmOptions& opts, cudaStream_t stream);

  // Grouped expert GEMM as a loop (cuBLASLt 13.1 has no grouped block-scaled API): for each group g,
  // d[g] = a[g] · b[g]ᵀ. Groups with a[g].rows == 0 are skipped.
  void grouped(const std::vector<Fp8Operand>& a, const std::vector<Fp8Operand>& b, const std::vector<void*>& d,
               const LtGemmOptions& opts, cudaStream_t stream);

  std::size_t cached_shapes() const;
  // The heuristic's count of usable algorithms for the last new shape (diagnostics).
  int last_heuristic_results() const { return last_heuristic_results_; }

  struct Plan;  // descriptors + algorithm of one shape (lt_gemm.cpp)

 private:
  using Key = std::tuple<int, int, int, int, int, int>;  // M, N, K, b mode, out, sm target
  Plan& plan_for(int m, int n, int k, ScaleMode b_mode, const LtGemmOptions& opts);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  int last_heuristic_results_ = 0;
};

// Convenience: one GEMM with a context the caller keeps (the name of the API).
inline void lt_fp8_gemm(LtFp8Gemm& ctx, const Fp8Operand& a, const Fp8Operand& b, void* d,
                        const LtGemmOptions& opts, cudaStream_t stream) {
  ctx.gemm(a, b, d, opts, stream);
}

// cublasLtGetVersion(), e.g. 130100 (works without a GPU).
std::size_t cublaslt_version();

}  // namespace tandem::cuda
