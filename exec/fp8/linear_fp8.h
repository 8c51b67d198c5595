// The three FP8 GEMMs of one linear layer, DeepSeek-V3 / Transformer Engine style (executor-notes
// §1.2): each quantises its high-precision operands as the recipe says and calls the reference
// block GEMM. These are the entry points the CPU executor's nn/moe code uses.
//
// Conventions: every pointer is row-major; W is [N, K] (out features x in features, PyTorch's
// layout); any M, N, K >= 1 (partial 128-blocks at the edges are handled by the quantisers and
// GEMMs). Outputs are overwritten, never accumulated: gradient accumulation is the caller's, in
// FP32, in an order the caller controls. With bf16_output the GEMM result is rounded to BF16
// (kept as float), as cuBLASLt with a BF16 D matrix would store it.
// Determinism: an output row of fprop/dgrad depends only on its input row (and W), so batching
// tokens differently gives bit-identical rows (block_gemm.h). wgrad sums over M: its result depends
// on all M tokens, in a fixed order.
#pragma once

namespace tandem::fp8 {

struct Fp8Options {
  bool pow2_scales = false;  // scales rounded to powers of two (TE's default); see quantize.h
  bool bf16_output = false;  // round the GEMM output to BF16
};

// y[M,N] = x[M,K] · W[N,K]ᵀ : x quantised 1x128 rowwise, W 128x128 blocks (VEC128 x BLK128x128).
void linear_fprop(const float* x, const float* W, float* y, int M, int N, int K,
                  const Fp8Options& o = {});
// dx[M,K] = dy[M,N] · W[N,K] : dy quantised 1x128 along N, Wᵀ as 128x128 blocks (transpose of W's
// blocks: exact, the same FP8 weights as fprop).
void linear_dgrad(const float* dy, const float* W, float* dx, int M, int N, int K,
                  const Fp8Options& o = {});
// dW[N,K] = dy[M,N]ᵀ · x[M,K] : dyᵀ and xᵀ quantised 1x128 along M (columnwise copies quantised
// from the high-precision tensors) (VEC128 x VEC128).
void linear_wgrad(const float* dy, const float* x, float* dW, int M, int N, int K,
                  const Fp8Options& o = {});

}  // namespace tandem::fp8
