// The sequence-wise balance loss on the device: the twin of exec/ops/balance/balance.h's
// balance_loss_forward / balance_loss_backward for T = float (read the formula there):
//
//   per sequence q of seq_len consecutive tokens, E = n_routed experts, K = top_k:
//     f_qi = E / (K · seq_len) · #{t in q : i among t's K experts}
//     P_qi = (Σ_t s_ti / S_t) / seq_len,       S_t = Σ_j s_tj  (s = the UNBIASED sigmoid scores)
//     per_sequence_q = α · Σ_i f_qi P_qi,      loss = Σ_q per_sequence_q      (FP32, as the CPU's T)
//   backward, with g_qi = ((d_loss · α) · f_qi) / seq_len:
//     d_scores_tj = (g_qj − Σ_i g_qi · (s_ti / S_t)) / S_t
//
// Numerics: BIT-IDENTICAL to exec/ops's <float> functions given the same scores and routing ids.
// Every value is computed by the CPU's FP32 operations in the CPU's order, each spelled with an
// explicit _rn intrinsic (no contraction): S_t and Σ_i g·s' sequentially over i = 0..E−1 by one
// thread, P_qi accumulated over the sequence's tokens in increasing t by one thread, Σ_i f·P
// and the sum over sequences sequentially by one thread; counts are integers (exact), converted
// with round-to-nearest as the CPU's static_cast. The scalar products the CPU does in float on
// the host side of its loop (f's scale E / (K · seq_len), α, d_loss · α) are done here on the host
// in float too. No atomics: deterministic run to run.
//
// Layouts: scores [tokens, E] FP32 row-major; expert [tokens · K] int32 in slot order (what the
// device router writes, = moe::Routing::expert); tokens = sequences · seq_len; f, P [sequences, E];
// per_sequence [sequences]; loss ONE device float; d_scores [tokens, E] (overwritten; may not alias
// scores). An id outside [0, E) is not counted (the CPU's vector index would be out of range).
//
// Cost: the forward is one block per sequence (thread i owns expert i; the token sums of each
// chunk of blockDim tokens are computed one token per thread into shared memory) and O(seq_len · K)
// id reads per thread; the backward one thread per token for S_t and the dot (sequential over E,
// the CPU's order), then a coalesced elementwise pass. Fine for E ≤ 1024 (the router's limit).
//
// Launchers: device pointers, asynchronous on `stream`, launches checked (CudaError), tokens = 0 is
// a no-op (the forward still writes *loss = 0), bad shapes throw std::invalid_argument.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

inline constexpr int kBalanceMaxExperts = 1024;

// moe::balance_loss_forward<float>: f, P, per_sequence, *loss. Requires seq_len > 0, tokens a
// multiple of seq_len, 0 < n_routed <= kBalanceMaxExperts, 0 < top_k <= n_routed.
void balance_loss_forward(const float* scores, const int32_t* expert, int tokens, int n_routed, int top_k,
                          int seq_len, double alpha, float* f, float* P, float* per_sequence, float* loss,
                          cudaStream_t stream);

// moe::balance_loss_backward<float>: d_scores from the forward's f [tokens / seq_len, E], the
// scores and d_loss = dJ/dL of the summed loss (block_ops passes float(balance_scale)).
void balance_loss_backward(const float* f, const float* scores, int tokens, int n_routed, int seq_len, double alpha,
                           float d_loss, float* d_scores, cudaStream_t stream);

}  // namespace tandem::cuda
