// Linear layers in PyTorch layout: y[M,N] = x[M,K] · W[N,K]ᵀ, with separable backward passes
// (input gradient now, weight gradient possibly later: zero-bubble / DualPipe "W").
//
// Numerics::exact — a GEMM in T with a FIXED summation order (the fixed-order contract):
//   * forward / backward-input: an output row's bits depend only on that row of the input and on
//     W (never on M, on other rows, or on threads); every output element is summed over k
//     (resp. n) in increasing order, one multiply-add at a time.
//   * backward-weight: dW[n,k] is accumulated in place, row by row of (dy, x) in increasing row
//     order, starting from dW's current value. Hence splitting the rows over several calls, in
//     order, gives bit-identical dW to one call over all rows.
// Numerics::bf16 — inputs rounded to BF16 (round-to-nearest-even), FP32 accumulation in the same
//   fixed order; forward / backward-input outputs rounded to BF16. The weight gradient is added
//   to dW in FP32 (dW is the FP32 gradient accumulator; it is not rounded).
// Numerics::fp8 — exec/fp8's block-scaled GEMMs (DeepSeek-V3 recipe: 1x128 activation tiles,
//   128x128 weight blocks, E4M3, FP32 promotion). Forward / backward-input outputs are rounded to
//   BF16 (as DeepSeek-V3's activations are); the weight gradient is computed in FP32 and added to dW.
// bf16 and fp8 need T = float (std::invalid_argument otherwise).
#pragma once

#include "exec/ops/tensor.h"

namespace tandem::nn {

// y[M,N] = x[M,K] · W[N,K]ᵀ
template <class T>
Mat<T> linear_forward(const Mat<T>& x, const Mat<T>& W, Numerics n);
// dx[M,K] = dy[M,N] · W[N,K]
template <class T>
Mat<T> linear_backward_input(const Mat<T>& dy, const Mat<T>& W, Numerics n);
// dW[N,K] += dy[M,N]ᵀ · x[M,K]   (dW must already have shape [N,K]; the caller zeroes it)
template <class T>
void linear_backward_weight(const Mat<T>& dy, const Mat<T>& x, Numerics n, Mat<T>& dW);

}  // namespace tandem::nn
