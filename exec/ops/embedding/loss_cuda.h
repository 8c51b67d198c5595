// Softmax cross-entropy on the device: the twin of loss.h, within a tolerance of it (CUDA's double
// exp/log are not glibc's and the per-row Σexp is a tree, not the CPU's column order). Host
// launchers on device pointers, asynchronous on `stream`, each kernel's launch checked (CudaError);
// empty shapes are no-ops; negative sizes throw std::invalid_argument. FP32 row-major tensors, like
// the CPU's Mat<float>. The CPU is built with -ffp-contract=off and no FMA; the device code spells
// every rounding with an explicit _rn intrinsic so nvcc cannot contract either.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// Softmax cross-entropy scaled by `scale`, per row i of logits [rows, vocab], target t = targets[i]:
//   row_loss[i]    = scale · (mx + log Σ_j exp(l_j − mx) − l_t)          in double, mx = max_j l_j
//   d_logits[i, j] = float(scale · (p_j − [j = t])),  p_j = exp(l_j − mx) / Σ
//   *loss          = Σ_i row_loss[i], summed in row order in double (the CPU's order)
// A negative target ignores the row: d_logits row = 0, row_loss = 0 (adds nothing to the sum).
// A target ≥ vocab (the CPU throws) gives a NaN row and a NaN row_loss. row_loss [rows] is
// required (it is the reduction's input); `loss` (one double) may be null. d_logits may not alias
// logits. Per row the max is exact and Σexp a fixed tree (deterministic, run to run); against the
// CPU (double exp/log differ from glibc's in the last bit, and the Σ order differs): loss within
// 1e-11 relative, d_logits within a few FP32 ulps (5e-7 relative, plus ~1e-15·scale where
// p ≈ 1 makes the target's p − 1 cancel), nearly always bit-equal.
void cross_entropy(const float* logits, int rows, int vocab, const int32_t* targets, double scale, float* d_logits,
                   double* row_loss, double* loss, cudaStream_t stream);

}  // namespace tandem::cuda
