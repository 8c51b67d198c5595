// Device twins of the small CPU ops of exec/nn (embedding, cross-entropy, AdamW) and the
// elementwise helpers the CUDA runtime needs (nn_ops.cu). Host launchers on device pointers,
// asynchronous on `stream`, each kernel's launch checked (CudaError); empty shapes are no-ops;
// negative sizes throw std::invalid_argument. FP32 row-major tensors, like exec/nn's Mat<float>.
//
// Numerics, op by op (the CPU is built with -ffp-contract=off and no FMA; the device code spells
// every rounding with an explicit _rn intrinsic so nvcc cannot contract either):
//   embedding fwd/bwd   bit-identical to exec/nn/embedding.h (a copy; the same adds in the same order)
//   cross_entropy       within a tolerance of exec/nn/loss.h (CUDA's double exp/log are not glibc's
//                       and the per-row Σexp is a tree, not the CPU's column order)
//   adamw_step          bit-identical to exec/nn/adamw.h (same FP32 operations in the same order,
//                       IEEE sqrt and division; the bias-correction scalars come from the host)
//   add/add_inplace/scale/round_to_bf16   bit-identical (one IEEE op; exec/fp8/bf16.h's bit recipe)
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// ---------------------------------------------------------------- embedding (exec/nn/embedding.h)

// out[i, :] = table[tokens[i], :]   table [vocab, hidden], tokens [n_tokens], out [n_tokens, hidden].
// The CPU throws on a token outside [0, vocab); a kernel cannot, and never reads out of bounds:
// such a row of `out` is filled with NaN (so it cannot pass unnoticed) and, when `bad_token` is
// not null, *bad_token is set to 1 (never cleared: the caller zeroes it and reads it when it likes).
void embedding_forward(const float* table, int vocab, int hidden, const int32_t* tokens, int n_tokens, float* out,
                       int* bad_token, cudaStream_t stream);

// d_table[tokens[i], :] += d_out[i, :] for i = 0, 1, … in order; accumulates (the caller zeroes
// d_table, as on the CPU). Deterministic without float atomics: the block of the FIRST occurrence
// of a token id owns that table row and adds every row of d_out with that id, in increasing i,
// into the row's previous value. So each element sees exactly the CPU's additions in the CPU's
// order: bit-identical to embedding_backward<float>. Cost: finding the first occurrences is an
// O(n_tokens²) integer scan (≈ 10⁸ compares at 16K tokens, tens of µs); the adds themselves are
// one pass over d_out. A token outside [0, vocab) is skipped (and sets *bad_token, as above).
void embedding_backward(const int32_t* tokens, int n_tokens, const float* d_out, int vocab, int hidden,
                        float* d_table, int* bad_token, cudaStream_t stream);

// ---------------------------------------------------------------- loss (exec/nn/loss.h)

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

// ---------------------------------------------------------------- AdamW (exec/nn/adamw.h)

// The per-step FP32 scalars of exec/nn/adamw.cpp, computed on the host exactly as the CPU does.
struct AdamWScalars {
  float b1 = 0, b2 = 0, one_m_b1 = 0, one_m_b2 = 0;
  float decay = 1;      // 1 − lr·wd
  float step_size = 0;  // lr / (1 − β1^t)
  float sqrt_bc2 = 1;   // sqrt(1 − β2^t)
  float eps = 0;
  bool bf16_moments = false;
};

// The scalars for step t (counting from 1; std::invalid_argument otherwise): the same double
// expressions and std::pow as exec/nn/adamw.cpp, so the same FP32 values bit for bit (host code
// in nn_ops.cu; the one product-difference, 1 − lr·wd, must not become an FMA: the x86-64
// baseline target has none, and exec/nn is built with -ffp-contract=off).
AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, bool bf16_moments,
                           int64_t step);
// From an nn::AdamWConfig (a template so this header stays C++17 and free of exec/nn; any struct
// with lr, beta1, beta2, eps, weight_decay, bf16_moments does).
template <class Config>
AdamWScalars adamw_scalars(const Config& c, int64_t step) {
  return adamw_scalars(c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.bf16_moments, step);
}

// One AdamW update of a flat FP32 shard of n elements (params, grads, m, v: device arrays; m, v
// zero before step 1), per element exactly as exec/nn/adamw.cpp:
//   m ← b1·m + (1−b1)·g;  v ← b2·v + (1−b2)·(g·g);  (BF16-rounded if bf16_moments)
//   p ← p·decay − step_size · (m / (sqrt(v) / sqrt_bc2 + eps))
// Bit-identical to adamw_step (elements are independent, so the split into spans is irrelevant).
void adamw_step(float* params, const float* grads, float* m, float* v, std::size_t n, const AdamWScalars& s,
                cudaStream_t stream);

// ---------------------------------------------------------------- elementwise (exact)

// out = a + b (out may alias a or b).
void add(const float* a, const float* b, std::size_t n, float* out, cudaStream_t stream);
// acc += x.
void add_inplace(float* acc, const float* x, std::size_t n, cudaStream_t stream);
// out = x · s (out may alias x).
void scale(const float* x, std::size_t n, float s, float* out, cudaStream_t stream);
// out = x rounded to BF16 and kept as FP32 (out may alias x): exec/fp8/bf16.h round_to_bf16 bit
// for bit — RNE by the same integer recipe; NaN keeps sign and top payload with the quiet bit set
// (not CUDA's canonical NaN, which is why this does not use __float2bfloat16_rn).
void round_to_bf16(const float* x, std::size_t n, float* out, cudaStream_t stream);

}  // namespace tandem::cuda
