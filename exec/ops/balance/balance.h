// Load balancing of the routed experts (deepseek-v3.md §1.1, §8).
//
// 1. Auxiliary-loss-free balancing: after each training step, with c_e = the number of (token,
//    slot) rows the step routed to expert e (summed over every micro-batch and every rank that
//    shares the router; the caller all-reduces the integer counts) and mean = Σ c / E:
//        bias_e += γ · sign(mean − c_e)          (sign(0) = 0; γ = the bias update speed)
//    Overloaded experts get a lower selection score, underloaded ones a higher. The comparison is
//    done exactly in integers (E·c_e against Σ c). The bias only affects selection (router.h).
// 2. Sequence-wise balance loss, per sequence of T tokens:
//        L = α Σ_i f_i P_i,   f_i = E / (K · T) · #{t in the sequence : i among t's K experts},
//                             P_i = 1/T Σ_t s'_{t,i},   s'_{t,i} = s_{t,i} / Σ_j s_{t,j}
//    (s = the unbiased sigmoid scores over all E experts). f is a constant (selection is piecewise
//    constant); the gradient flows through P into the scores and on through the router's
//    sigmoid (router_backward_logits takes it as d_scores). A micro-batch holds whole sequences
//    of seq_len consecutive tokens; its loss is the SUM over its sequences (scale d_loss, e.g.
//    1 / sequences in the global batch, for a mean).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "exec/ops/router/router.h"

namespace tandem::moe {

// Rows routed to each expert: counts[e], size n_routed.
std::vector<int64_t> expert_counts(const Routing& routing, int n_routed);
// counts[e] += rows of `routing` routed to e (accumulate a step over micro-batches).
void add_expert_counts(const Routing& routing, std::vector<int64_t>& counts);
// The same from the expert ids alone (a backend that keeps them outside a Routing).
void add_expert_counts(std::span<const int32_t> expert, std::vector<int64_t>& counts);

struct LoadStats {
  int64_t max = 0, min = 0, total = 0;
  double mean = 0;           // total / experts
  double max_over_mean = 0;  // 1 = perfectly balanced (0 when nothing was routed)
};
LoadStats load_stats(const std::vector<int64_t>& counts);

// bias_e += gamma · sign(mean − counts_e), in T.
template <class T>
void update_bias(Vec<T>& bias, const std::vector<int64_t>& counts, double gamma);

template <class T>
struct BalanceLoss {
  T loss = 0;                 // Σ over the micro-batch's sequences of α Σ_i f_i P_i
  std::vector<T> per_sequence;
  Mat<T> f;                   // [sequences, n_routed]
  Mat<T> P;                   // [sequences, n_routed]
};

// scores: [tokens, n_routed], tokens = sequences · seq_len.
template <class T>
BalanceLoss<T> balance_loss_forward(const Routing& routing, const Mat<T>& scores, int seq_len, double alpha);
// d_loss = dJ/dL for the summed loss → d_scores [tokens, n_routed] (for router_backward_logits).
template <class T>
Mat<T> balance_loss_backward(const BalanceLoss<T>& fwd, const Mat<T>& scores, int seq_len, double alpha,
                             T d_loss);

}  // namespace tandem::moe
