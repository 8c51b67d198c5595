// RMSNorm (Hugging Face DeepseekV3RMSNorm): y[i,:] = w ∘ (x[i,:] · r_i), r_i = 1/sqrt(mean_j x[i,j]² + eps).
// Runs in T whatever the Numerics (DeepSeek-V3 keeps normalisation out of FP8). Nothing is saved:
// DeepSeek-V3 recomputes every RMSNorm in backward, so both backward passes take the norm's input
// x and recompute r_i. Row i's outputs depend only on row i; the weight gradient is accumulated in
// place, rows in increasing order (the same contract as linear.h).
#pragma once

#include "exec/ops/tensor.h"

namespace tandem::nn {

// y[M,H] from x[M,H] and w[H].
template <class T>
Mat<T> rmsnorm_forward(const Mat<T>& x, const Vec<T>& w, double eps);
// dx[M,H] from the forward input x and the output gradient dy.
template <class T>
Mat<T> rmsnorm_backward_input(const Mat<T>& x, const Vec<T>& w, double eps, const Mat<T>& dy);
// dw[H] += Σ_i dy[i,:] ∘ x[i,:] · r_i  (rows in order; the caller zeroes dw).
template <class T>
void rmsnorm_backward_weight(const Mat<T>& x, double eps, const Mat<T>& dy, Vec<T>& dw);

}  // namespace tandem::nn
