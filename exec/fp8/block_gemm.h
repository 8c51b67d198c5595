// The reference block-scaled FP8 GEMMs, with DeepSeek-V3's promotion semantics (tensor-core
// partial sums over 128 K elements, promoted to an FP32 accumulator where the block scales are
// applied). They compute what cuBLASLt's VEC128 x BLK128x128 and VEC128 x VEC128 modes compute,
// in the "TN" form cuBLASLt requires: both operands K-contiguous, d = a · bᵀ.
//
// Exact definition (the contract; every output element, M x N row-major):
//   P(m, n, kb) = sum over k = 128 kb .. min(K, 128 kb + 128) - 1, in increasing k, in FP32,
//                 starting from +0, of decode(a[m][k]) * decode(b[n][k])   (each product exact)
//   d[m][n]     = sum over kb = 0 .. L - 1, in increasing kb, in FP32, starting from +0,
//                 of (sa(m, kb) * sb(n, kb)) * P(m, n, kb)
//   then rounded to BF16 (RNE, stored as float) when bf16_output (cuBLASLt with D = BF16).
//   sa = a's VEC128 scale of row m; sb = b's VEC128 scale of row n, or the BLK128x128 scale of
//   b's block (n / 128, kb). Multiplies and adds are separate roundings (no FMA contraction: the
//   library is compiled with -ffp-contract=off).
// Determinism: so d[m][n] depends only on row m of a, row n of b and K, never on M, N, the other
// rows, the blocking of the loops or threads. The executor's schedule-equivalence tests (the same
// rows computed in differently sized batches must agree bit for bit) rely on it.
// Edges: any M, N, K >= 0; the last K block may be partial (its missing products are absent, not
// zeros added). a.cols must equal b.cols (std::invalid_argument otherwise).
// Speed: single-threaded, packed panels and a register-tiled micro-kernel (the tiling changes
// which elements are computed together, never the order within an element).
#pragma once

#include "exec/fp8/quantize.h"

namespace tandem::fp8 {

// a: [M, K] 1x128 tiles, b: [N, K] 128x128 blocks, d: [M, N] row-major (fprop, dgrad).
void gemm_vec128_blk128(const RowwiseFp8& a, const BlockFp8& b, float* d, bool bf16_output);

// a: [M, K] 1x128 tiles, b: [N, K] 1x128 tiles, d: [M, N] row-major (wgrad).
void gemm_vec128_vec128(const RowwiseFp8& a, const RowwiseFp8& b, float* d, bool bf16_output);

}  // namespace tandem::fp8
