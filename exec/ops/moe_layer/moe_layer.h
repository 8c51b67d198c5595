// The MoE MLP of one layer on ONE EP member, cut into the sub-steps the executor schedules as
// separate tasks (the all-to-alls between them belong to the communicator, exec/comm).
//
// Every member is both a token side (its own micro-batch of normed tokens x) and an expert side
// (its E/ep routed experts). Forward, on each member r of the EP group:
//   [token]  MoeTokenState st = route(cfg, W, x)               router forward + dispatch plan
//   [token]  send  = dispatch_pack(cfg, st, x)                 one buffer per member
//   [comm]   recv  = all_to_all_v(send)                        dispatch
//   [expert] MoeExpertState es = dispatch_unpack(cfg, r, recv) padded per-expert segments
//   [expert] experts_forward(cfg, W, es)                       nn::ffn_forward per local expert
//   [expert] send  = combine_pack(cfg, es)
//   [comm]   recv  = all_to_all_v(send)                        combine
//   [token]  routed = combine(cfg, st, recv)                   Σ_k gate · y, k = 0..K-1
//   [token]  shared = shared_expert_forward(cfg, W, x, &ss)    independent of the above
//            output = routed + shared (+ the residual: the caller's business)
// Backward (dout = the gradient at the MoE output, the same for routed and shared parts):
//   [token]  send = combine_backward_pack(cfg, st, dout)       d_gate kept in st; rows g·dout
//   [comm]   recv = all_to_all_v(send)                         combine_b
//   [expert] combine_backward_unpack(cfg, es, recv)
//   [expert] experts_backward_input(cfg, W, es)                dx per expert (+ what W needs)
//   [expert] send = dispatch_backward_pack(cfg, es)
//   [comm]   recv = all_to_all_v(send)                         dispatch_b
//   [token]  dx_routed = dispatch_backward_unpack(cfg, st, recv)    Σ_k, k = 0..K-1
//   [token]  dx_router = route_backward_input(cfg, W, st, d_scores) d_scores: balance-loss grad
//   [token]  gs = shared_expert_backward_input(cfg, W, ss, dout)
//            dx = (dx_routed + dx_router) + gs.dx, in that order
//   weight passes, any time after their input pass (zero-bubble "W"):
//   [expert] experts_backward_weight(cfg, es, grads)
//   [token]  route_backward_weight(cfg, st, grads)
//   [token]  shared_expert_backward_weight(cfg, ss, gs, dout, grads)
// The gate-weight gradient d_gate(t,k) = <y_{t,k}, dout_t> is computed on the TOKEN side, in
// combine_backward_pack, from the expert outputs the forward combine received (st.y_slots): the
// token side already holds both factors, so it costs no transfer, it is the exact gradient of
// what the forward summed (y after the combine wire's rounding), and the router backward can run
// before — overlapped with — the expert backward instead of waiting for dispatch_b.
//
// Gradients of replicated weights (router, shared expert) are per-member partial sums over the
// member's tokens; summing them over members is the DP/EP all-reduce's business (its order is
// its own). Routed-expert gradients are complete on their owner.
#pragma once

#include <cstdint>
#include <vector>

#include "exec/ops/moe_layer/dispatch_plan.h"
#include "exec/ops/router/router.h"
#include "exec/ops/linear/ffn.h"
#include "exec/spec/moe_config.h"
#include "models/model_card.h"

namespace tandem::moe {

using spec::MoeConfig;  // exec/spec/moe_config.h: one definition for every backend

// Weights of one MoE layer as held by EP member `rank`.
template <class T>
struct MoeWeights {
  Mat<T> router;  // [E, hidden] gate weight
  Vec<T> bias;    // [E] selection bias: aux-loss-free balancing (balance.h), no gradient
  int first_expert = 0;                    // global index of experts[0]
  std::vector<nn::FfnWeights<T>> experts;  // the member's E/ep routed experts
  nn::FfnWeights<T> shared;                // n_shared · moe_inter wide (0×0 when n_shared = 0)
};

// Seeded, deterministic init: every matrix from its own std::mt19937_64 stream, seeded by
// splitmix64 of (seed, matrix tag), drawn in row-major order from std::normal_distribution<double>
// with mean 0 and standard deviation 0.006 and rounded to T. The tag names the matrix by its GLOBAL
// identity (router; shared gate/up/down; routed expert e's gate/up/down), so an expert's weights do
// not depend on ep or rank and an EP run starts identical to the single-rank reference. The bias
// starts at zero. Pass a different seed per layer.
template <class T>
MoeWeights<T> init_moe_weights(const MoeConfig& cfg, int rank, uint64_t seed);

template <class T>
struct MoeGrads {
  Mat<T> router;                           // [E, hidden]
  std::vector<nn::FfnWeights<T>> experts;  // local experts
  nn::FfnWeights<T> shared;
};
template <class T>
MoeGrads<T> zero_grads(const MoeWeights<T>& w);

// Token side of one micro-batch.
template <class T>
struct MoeTokenState {
  RouterState<T> router;
  DispatchPlan plan;
  Mat<T> y_slots;   // [tokens·K, hidden] expert outputs received by combine (for d_gate)
  Mat<T> d_gate;    // [tokens, K] after combine_backward_pack
  Mat<T> d_logits;  // [tokens, E] after route_backward_input
};

// Expert side of one micro-batch.
template <class T>
struct MoeExpertState {
  SegmentLayout layout;
  std::vector<Mat<T>> x;                      // received segments (moved into saved by forward)
  std::vector<nn::FfnSaved<T>> saved;         // per local expert
  std::vector<Mat<T>> y;                      // outputs, until combine_pack
  std::vector<Mat<T>> dy;                     // received by combine_b
  std::vector<nn::FfnInputGrad<T>> in_grad;   // until the weight pass
  std::vector<Mat<T>> dx;                     // until dispatch_backward_pack
};

// ---- forward ----
template <class T>
MoeTokenState<T> route(const MoeConfig& cfg, const MoeWeights<T>& w, const Mat<T>& x,
                       const Routing* fixed = nullptr);
template <class T>
std::vector<Buffer> dispatch_pack(const MoeConfig& cfg, const MoeTokenState<T>& st, const Mat<T>& x);
// fp8_segments: with an FP8 dispatch wire, also the received FP8 rows per segment as they came
// (unpack_dispatch), for a backend whose grouped GEMM takes them without re-quantising.
template <class T>
MoeExpertState<T> dispatch_unpack(const MoeConfig& cfg, int rank, const std::vector<Buffer>& recv,
                                  std::vector<fp8::RowwiseFp8>* fp8_segments = nullptr);
template <class T>
void experts_forward(const MoeConfig& cfg, const MoeWeights<T>& w, MoeExpertState<T>& es);
template <class T>
std::vector<Buffer> combine_pack(const MoeConfig& cfg, MoeExpertState<T>& es);
template <class T>
Mat<T> combine(const MoeConfig& cfg, MoeTokenState<T>& st, const std::vector<Buffer>& recv);
// n_shared = 0: zeros.
template <class T>
Mat<T> shared_expert_forward(const MoeConfig& cfg, const MoeWeights<T>& w, const Mat<T>& x,
                             nn::FfnSaved<T>* saved);

// ---- backward ----
template <class T>
std::vector<Buffer> combine_backward_pack(const MoeConfig& cfg, MoeTokenState<T>& st, const Mat<T>& dout);
template <class T>
void combine_backward_unpack(const MoeConfig& cfg, MoeExpertState<T>& es, const std::vector<Buffer>& recv);
template <class T>
void experts_backward_input(const MoeConfig& cfg, const MoeWeights<T>& w, MoeExpertState<T>& es);
template <class T>
std::vector<Buffer> dispatch_backward_pack(const MoeConfig& cfg, MoeExpertState<T>& es);
template <class T>
void experts_backward_weight(const MoeConfig& cfg, MoeExpertState<T>& es, MoeGrads<T>& grads);
template <class T>
Mat<T> dispatch_backward_unpack(const MoeConfig& cfg, const MoeTokenState<T>& st, const std::vector<Buffer>& recv);
// Needs st.d_gate (combine_backward_pack); d_scores: an extra dense gradient at the scores (the
// balance loss's), may be null. Keeps d_logits in st for the weight pass.
template <class T>
Mat<T> route_backward_input(const MoeConfig& cfg, const MoeWeights<T>& w, MoeTokenState<T>& st,
                            const Mat<T>* d_scores = nullptr);
template <class T>
void route_backward_weight(const MoeConfig& cfg, const MoeTokenState<T>& st, MoeGrads<T>& grads);
template <class T>
nn::FfnInputGrad<T> shared_expert_backward_input(const MoeConfig& cfg, const MoeWeights<T>& w,
                                                 const nn::FfnSaved<T>& saved, const Mat<T>& dout);
template <class T>
void shared_expert_backward_weight(const MoeConfig& cfg, const nn::FfnSaved<T>& saved,
                                   const nn::FfnInputGrad<T>& g, const Mat<T>& dout, MoeGrads<T>& grads);

// ---- the single-rank reference: every sub-step above with ep = 1, the buffers handed over ----
template <class T>
struct MoeLocalState {
  MoeTokenState<T> token;
  MoeExpertState<T> experts;
  nn::FfnSaved<T> shared;
};
// output = routed + shared. cfg.ep.ep must be 1.
template <class T>
Mat<T> moe_forward_local(const MoeConfig& cfg, const MoeWeights<T>& w, const Mat<T>& x,
                         MoeLocalState<T>* st, const Routing* fixed = nullptr);
// dx = (dx_routed + dx_router) + dx_shared; grads += (zero them first: zero_grads).
template <class T>
Mat<T> moe_backward_local(const MoeConfig& cfg, const MoeWeights<T>& w, MoeLocalState<T>& st,
                          const Mat<T>& dout, MoeGrads<T>& grads, const Mat<T>* d_scores = nullptr);

}  // namespace tandem::moe
