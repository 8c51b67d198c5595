#include "exec/backends/cuda/infra/blas.h"

#include <string>

#include "exec/backends/cuda/infra/lt_gemm.h"

namespace tandem::cuda {

namespace {

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

Blas::Blas(cudaStream_t stream) : stream_(stream) {
  check_lt(cublasCreate(&handle_), "cublasCreate");
  check_lt(cublasSetStream(handle_, stream_), "cublasSetStream");
  // True FP32 even under NVIDIA_TF32_OVERRIDE=1: the FP32 path is the comparable one.
  check_lt(cublasSetMathMode(handle_, CUBLAS_PEDANTIC_MATH), "cublasSetMathMode");
}

Blas::~Blas() {
  if (handle_) cublasDestroy(handle_);
}

void Blas::set_stream(cudaStream_t stream) {
  stream_ = stream;
  check_lt(cublasSetStream(handle_, stream_), "cublasSetStream");
}

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands and m/n; the
// row-major strides are the column-major leading dimensions of the transposed views.
void Blas::gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  check_lt(cublasSgemm(handle_, op(trans_b), op(trans_a), n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc),
           "cublasSgemm");
}

void Blas::gemm_strided_batched(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                                long long stride_a, const float* b, int ldb, long long stride_b, float beta, float* c,
                                int ldc, long long stride_c, int batch) {
  if (m == 0 || n == 0 || batch == 0) return;
  check_lt(cublasSgemmStridedBatched(handle_, op(trans_b), op(trans_a), n, m, k, &alpha, b, ldb, stride_b, a, lda,
                                     stride_a, &beta, c, ldc, stride_c, batch),
           "cublasSgemmStridedBatched");
}

void Blas::gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const uint16_t* a, int lda,
                     const uint16_t* b, int ldb, float beta, float* c, int ldc) {
  if (m == 0 || n == 0) return;
  check_lt(cublasGemmEx(handle_, op(trans_b), op(trans_a), n, m, k, &alpha, b, CUDA_R_16BF, ldb, a, CUDA_R_16BF, lda,
                        &beta, c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
           "cublasGemmEx(BF16)");
}

}  // namespace tandem::cuda
