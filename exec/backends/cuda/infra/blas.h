// Row-major GEMMs through cuBLAS for the CUDA backend's FP32 and BF16 paths (the FP8 path is
// lt_gemm.h). One Blas per stream user (a rank's compute stream): it owns a cuBLAS handle bound
// to that stream and is not thread-safe.
//
// Row-major C[M,N] = op(A)·op(B) is computed as cuBLAS's column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so the
// caller speaks row-major only: lda/ldb/ldc are row strides (elements) of the matrices as stored.
//   trans_a = false: A is [M,K] (lda >= K);  true: A is stored [K,M] (lda >= M) and used as Aᵀ.
//   trans_b = false: B is [K,N] (ldb >= N);  true: B is stored [N,K] (ldb >= K) and used as Bᵀ.
// So the PyTorch-layout linear y = x·Wᵀ is gemm(false, true, M, N, K, 1, x, K, W, K, 0, y, N).
//
// Numerics: FP32 GEMMs run in true FP32 (CUBLAS_PEDANTIC_MATH: no TF32 even when the
// environment asks for it), so they are comparable with the CPU's exact path to FP32 rounding
// (not bit-identical: cuBLAS picks its own summation order). The BF16 GEMM takes BF16 inputs,
// accumulates in FP32 and writes FP32 (round the output yourself where the recipe rounds it).
// Errors throw LtError (lt_gemm.h) naming the call and cuBLAS's status string.
#pragma once

#include <cstdint>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

namespace tandem::cuda {

class Blas {
 public:
  explicit Blas(cudaStream_t stream);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  void set_stream(cudaStream_t stream);
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t handle() const { return handle_; }

  // C = alpha·op(A)·op(B) + beta·C, FP32.
  void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
            int ldb, float beta, float* c, int ldc);
  // `batch` independent GEMMs; matrix i of A starts at a + i·stride_a (elements), likewise B, C.
  void gemm_strided_batched(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
                            long long stride_a, const float* b, int ldb, long long stride_b, float beta, float* c,
                            int ldc, long long stride_c, int batch);
  // C (FP32) = alpha·op(A)·op(B) + beta·C with A, B in BF16 (raw uint16_t bit patterns).
  void gemm_bf16(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const uint16_t* a, int lda,
                 const uint16_t* b, int ldb, float beta, float* c, int ldc);

 private:
  cublasHandle_t handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace tandem::cuda
