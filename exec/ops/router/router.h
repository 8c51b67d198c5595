// The DeepSeek-V3 router ("noaux_tc" gate), forward and backward, on the CPU.
//
// Forward, per token t (reference: deepseek-v3.md §1.1):
//   logits = x · Wgᵀ                     nn::linear_forward in T, Numerics::exact (gating stays in
//                                          high precision, §6.1), Wg: [n_routed, hidden]
//   s      = sigmoid(logits)             the affinities (unbiased), [tokens, n_routed]
//   b      = s + bias                    the selection scores; bias is the aux-loss-free balancing
//                                          buffer (balance.h), never trained by gradients
//   group score of group g = sum of the 2 largest b of its experts (the 1 largest when a group
//     has a single expert); groups are contiguous blocks of n_routed / n_group experts
//   keep the topk_group best groups, then the top_k best experts (by b) among their experts
//   gate_j = rsf · s[e_j] / Σ_i s[e_i]   when norm_topk_prob (else rsf · s[e_j]); rsf =
//                                          routed_scaling_factor; gates use the UNBIASED s.
// Tie-break (deterministic, documented): groups and experts are ranked by (score descending,
//   index ascending): of two equal scores, the lower group / expert index wins. The k slots of a
//   token list its experts in that rank order (slot 0 = the best biased score). NaN scores are
//   not supported (they are not training data).
//
// Groups are nodes. In DeepSeek-V3 training the n_group = 8 groups of 32 experts map one-to-one
// onto the 8 nodes of an EP64 group (8 GPUs a node, 4 experts a GPU), so "at most topk_group
// groups" is the node limit M = 4 of the dispatch (§5.1). With the EP layout of dispatch_plan.h
// (contiguous blocks of n_routed/ep experts per rank, ranks numbered node-major), group g is
// exactly node g when ep == n_group · gpus_per_node: group g = experts [g·E/G, (g+1)·E/G) = ranks
// [g·gpn, (g+1)·gpn) = node g. dispatch_plan.h has the helpers (group_of_expert, node_of_expert,
// groups_are_nodes).
//
// Backward: the selection is piecewise constant (its derivative is zero almost everywhere), so
// only the gates (and the dense balance-loss term, balance.h) carry gradient:
//   d_gate[t, j] → d_s[t, e_j] (through the normalisation) → (+ d_scores from the balance loss)
//   → d_logits = d_s ⊙ s ⊙ (1 − s) → dx = d_logits · Wg (input pass) and dWg += d_logitsᵀ · x
//   (weight pass), each a separate function so the schedule can split them.
#pragma once

#include <cstdint>
#include <vector>

#include "common/signed_index.h"
#include "exec/ops/tensor.h"
#include "exec/spec/router_config.h"
#include "models/model_card.h"

namespace tandem::moe {

using nn::Mat;
using nn::Vec;

using spec::RouterConfig;  // exec/spec/router_config.h: one definition for every backend

// The experts chosen for a micro-batch: expert[t * top_k + j] is token t's slot j.
struct Routing {
  int tokens = 0;
  int top_k = 0;
  std::vector<int32_t> expert;

  int32_t at(int t, int j) const { return expert[idx(t) * top_k + j]; }
};

// Selection for one token: scores[n_routed] (unbiased), bias[n_routed] → out[top_k], in rank
// order (the group-limited top-k above).
template <class T>
void select_token(const RouterConfig& cfg, const T* scores, const T* bias, int32_t* out);

// Selection for every row of `scores` ([tokens, n_routed]) with the bias vector [n_routed].
template <class T>
Routing select_experts(const RouterConfig& cfg, const Mat<T>& scores, const Vec<T>& bias);

// Gate weights [tokens, top_k] of a routing from the unbiased scores.
template <class T>
Mat<T> gate_weights(const RouterConfig& cfg, const Mat<T>& scores, const Routing& routing);

// What the router forward keeps for backward (one micro-batch).
template <class T>
struct RouterState {
  Mat<T> x;       // router input [tokens, hidden] (the weight pass needs it)
  Mat<T> scores;  // sigmoid(logits) [tokens, n_routed], unbiased
  Routing routing;
  Mat<T> gate;    // [tokens, top_k]
};

// Forward. `fixed` (optional) replaces the selection by a given routing (finite-difference checks
// with the selection held fixed; recomputation that must repeat a step's choices).
template <class T>
RouterState<T> router_forward(const RouterConfig& cfg, const Mat<T>& Wg, const Vec<T>& bias,
                              const Mat<T>& x, const Routing* fixed = nullptr);

// d_gate [tokens, top_k] (plus, optionally, a dense d_scores [tokens, n_routed] such as the
// balance loss's) → d_logits [tokens, n_routed].
template <class T>
Mat<T> router_backward_logits(const RouterConfig& cfg, const RouterState<T>& st,
                              const Mat<T>& d_gate, const Mat<T>* d_scores = nullptr);
// Input pass: dx [tokens, hidden] = d_logits · Wg.
template <class T>
Mat<T> router_backward_input(const Mat<T>& Wg, const Mat<T>& d_logits);
// Weight pass: dWg += d_logitsᵀ · x (rows in order, nn's fixed-order contract).
template <class T>
void router_backward_weight(const RouterState<T>& st, const Mat<T>& d_logits, Mat<T>& dWg);

}  // namespace tandem::moe
