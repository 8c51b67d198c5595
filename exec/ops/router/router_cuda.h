// The DeepSeek-V3 router ("noaux_tc" gate) on the device: the twin of exec/ops/router/router.h
// (router.cu). Same semantics, read there: s = sigmoid(logits); b = s + bias selects; a group's
// score is the sum of its 2 largest b (its only b when a group has one expert); the topk_group
// best groups are kept and the top_k best experts (by b) among theirs are chosen, ranked by
// (score descending, index ascending), slot j = the j-th best; gate_j = rsf · s_j / Σ_i s_i
// (norm_topk_prob; else rsf · s_j) from the UNBIASED s, Σ in slot order.
//
// Numerics against the CPU:
//   router_sigmoid      1 / (1 + exp(−z)) in FP32 as the CPU writes it, with exp(−z) the double
//                       exp rounded to FP32 (≤ 0.5 ulp + a rare double-rounding case; glibc's expf
//                       is within ~0.5 ulp too, so they agree nearly always, not always): compare
//                       with a tolerance (a few FP32 ulps).
//   router_select       given the same scores and bias: the same experts, slots and gates, bit for
//                       bit, ties included. The comparisons are the CPU's (>, == and the index), the
//                       sums the CPU's FP32 adds (a group's m1 + m2; Σ s in slot order), the gate
//                       s / Σ · rsf. Selection is a total order on (b, index), so which parallel
//                       algorithm finds the top-k does not matter.
//   router_backward_logits  bit-identical to router_backward_logits<float> given the same scores,
//                       routing, d_gate and d_scores (the same FP32 ops in the same order).
//   add_expert_counts   exact (integer atomics).
// NaN scores are unsupported (as on the CPU); the kernels still never index out of bounds: a slot
// with no candidate gets expert −1 and a NaN gate.
//
// The router GEMM logits = x · Wgᵀ is the caller's Blas::gemm in FP32 (or the convenience
// router_forward(Blas&, …) below); so are the backward GEMMs: dx = d_logits · Wg
// (blas.gemm(false, false, tokens, hidden, E, 1, d_logits, E, Wg, hidden, 0, dx, hidden)) and
// dWg += d_logitsᵀ · x (blas.gemm(true, false, E, hidden, tokens, 1, d_logits, E, x, hidden, 1, dWg,
// hidden)). cuBLAS's summation order is not the CPU's, so logits (hence scores, hence a selection
// near a tie) may differ from exec/ops in the last bits.
//
// Launchers: device pointers, asynchronous on `stream` (last), launch checked (CudaError), empty
// token counts are no-ops, bad shapes / configs throw std::invalid_argument.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "exec/spec/router_config.h"

namespace tandem::cuda {

class Blas;

// Experts the device router supports (one warp per token, the token's row staged in shared memory).
inline constexpr int kRouterMaxExperts = 1024;

using spec::RouterConfig;  // exec/spec/router_config.h: the CPU reference's type

// RouterConfig::validate()'s rules, plus n_routed <= kRouterMaxExperts; std::invalid_argument.
void check_device_router(const RouterConfig& p);

// scores[i] = 1 / (1 + exp(−logits[i])) for i < n (scores may alias logits).
void router_sigmoid(const float* logits, std::size_t n, float* scores, cudaStream_t stream);

// Selection and gates from the unbiased scores [tokens, E] and bias [E]:
// expert [tokens · top_k] (int32, slot order), gate [tokens · top_k].
void router_select(const float* scores, const float* bias, int tokens, const RouterConfig& p, int32_t* expert,
                   float* gate, cudaStream_t stream);

// router_sigmoid + router_select from logits [tokens, E] (scores may alias logits).
void router_forward(const float* logits, const float* bias, int tokens, const RouterConfig& p, float* scores,
                    int32_t* expert, float* gate, cudaStream_t stream);

// The whole forward from x [tokens, hidden] and Wg [E, hidden] on blas's stream: the FP32 GEMM
// into `scores` (scores = x · Wgᵀ, then the sigmoid in place), then the selection.
void router_forward(Blas& blas, const float* x, const float* Wg, int tokens, int hidden, const float* bias,
                    const RouterConfig& p, float* scores, int32_t* expert, float* gate);

// Backward to the logits (router_backward_logits of exec/ops):
//   ds = d_scores (or 0 when null: the balance loss's term, [tokens, E]), then for each slot j
//   ds[e_j] += rsf · (dg_j − dot / S) / S   with S = Σ_j s[e_j], dot = Σ_j dg_j · s[e_j] (slot order)
//   (norm_topk_prob; else ds[e_j] += rsf · dg_j);  d_logits = ds ⊙ (s ⊙ (1 − s)).
// scores [tokens, E], expert / d_gate [tokens · top_k], d_logits [tokens, E] (may alias d_scores).
// A slot's expert outside [0, E) is skipped.
void router_backward_logits(const float* scores, const int32_t* expert, const float* d_gate, const float* d_scores,
                            int tokens, const RouterConfig& p, float* d_logits, cudaStream_t stream);

// counts[e] += number of the n entries of `expert` equal to e, for 0 <= e < n_routed (int64, the
// step's load for the aux-loss-free bias update). Entries outside [0, n_routed) are ignored (the
// CPU's add_expert_counts throws on them).
void add_expert_counts(const int32_t* expert, std::size_t n, int n_routed, int64_t* counts, cudaStream_t stream);

}  // namespace tandem::cuda
