#include "exec/fp8/linear_fp8.h"

#include <stdexcept>
#include <string>

#include "exec/fp8/block_gemm.h"
#include "exec/fp8/quantize.h"

namespace tandem::fp8 {
namespace {

void check_sizes(const char* what, int M, int N, int K) {
  if (M < 1 || N < 1 || K < 1) {
    throw std::invalid_argument(std::string(what) + ": M, N, K must be >= 1 (got " +
                                std::to_string(M) + ", " + std::to_string(N) + ", " +
                                std::to_string(K) + ")");
  }
}

}  // namespace

void linear_fprop(const float* x, const float* W, float* y, int M, int N, int K,
                  const Fp8Options& o) {
  check_sizes("linear_fprop", M, N, K);
  const QuantOptions q{o.pow2_scales};
  gemm_vec128_blk128(quantize_rowwise(x, M, K, q), quantize_blocks(W, N, K, q), y, o.bf16_output);
}

void linear_dgrad(const float* dy, const float* W, float* dx, int M, int N, int K,
                  const Fp8Options& o) {
  check_sizes("linear_dgrad", M, N, K);
  const QuantOptions q{o.pow2_scales};
  // Wᵀ [K, N] from W's own 128x128 quantisation: dgrad sees exactly fprop's FP8 weights.
  gemm_vec128_blk128(quantize_rowwise(dy, M, N, q), transpose(quantize_blocks(W, N, K, q)), dx,
                     o.bf16_output);
}

void linear_wgrad(const float* dy, const float* x, float* dW, int M, int N, int K,
                  const Fp8Options& o) {
  check_sizes("linear_wgrad", M, N, K);
  const QuantOptions q{o.pow2_scales};
  // dyᵀ [N, M] and xᵀ [K, M]: the reduction dimension M made contiguous, as TN needs.
  gemm_vec128_vec128(quantize_columnwise(dy, M, N, q), quantize_columnwise(x, M, K, q), dW,
                     o.bf16_output);
}

}  // namespace tandem::fp8
