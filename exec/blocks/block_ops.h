// The sub-steps of one block for one micro-batch, cut exactly as the Program's tasks cut them:
//
//   layer  attn_f     x → RMSNorm → MLA → h = x + attn; xn = RMSNorm(h); MoE: router + dispatch pack,
//                     sequence-wise balance loss forward (balance_alpha > 0)
//          dispatch_f all_to_all_v of the routed rows to the EP group, unpacked into expert segments
//          mlp_f      dense: FFN, out = h + ffn; MoE: local experts + combine pack, shared expert
//          combine_f  all_to_all_v back; out = h + (Σ_k gate·y + shared)
//          combine_b  pack g·dout, all_to_all_v to the experts, unpack
//          mlp_b      dense: FFN input grad; MoE: experts' input grads + pack, shared expert input grad
//          dispatch_b all_to_all_v of the experts' input grads back, Σ over slots
//          attn_b     router input grad (MoE, with the balance loss's d_scores), post-attention
//                     RMSNorm, MLA, input RMSNorm input grads
//          mlp_w      FFN / shared expert / routed experts (per source member) weight grads
//          attn_w     norms, MLA and router weight grads
//   embedding  attn_f lookup; attn_b nothing (token ids have no gradient); attn_w scatter-add
//   head       mlp_f final norm + projection; loss: cross-entropy scaled by 1/global tokens;
//              mlp_b dlogits → dh (+ the MTP module's input grad d_out, when there is one);
//              mlp_w norm + projection weight grads
//   mtp        (DeepSeek-V3 §2.2, depth 1) attn_f: emb = the MTP copy of the embedding at the next
//              tokens (targets), x = eh_proj·[enorm(emb); hnorm(h)] with h = the head block's input,
//              then the layer as above; loss: own norm + the SHARED lm_head + cross-entropy on
//              t_{i+2} (the last position of each sequence ignored) scaled by λ/D / global tokens,
//              and the head's backward-input right there (d_out of the layer); attn_b ends in the
//              input projection's backward: dx = d/dh (added to the head's dh), d_emb; weight
//              passes: the layer's, then shared_head.norm and the lm_head contribution (mlp_w),
//              then enorm/hnorm/eh_proj and the embedding contribution (attn_w) — the shared
//              tensors' contributions go to BlockGrads::mtp_lm_head / mtp_embed.
//
// The same functions serve the distributed ranks and the single-thread reference (ep = 1, the
// exchange hands the buffers straight back): the arithmetic is shared, so any difference between
// the two is an ordering difference, which the tests catch.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "exec/ops/balance/balance.h"
#include "exec/ops/head/head.h"
#include "exec/ops/mtp/mtp.h"
#include "exec/blocks/block_params.h"

namespace tandem::runtime {

// One all_to_all_v over the EP group: one buffer to each member in, one from each member out.
using Exchange = std::function<std::vector<moe::Buffer>(std::vector<moe::Buffer>& send, const std::string& label)>;

struct BlockContext {
  const ModelSetup* setup = nullptr;
  int member = 0;          // this rank's index in its EP group
  int64_t seq_len = 0;
  double loss_scale = 1;   // 1 / tokens of the global batch
  // Sequence-wise balance loss (exec/ops/balance/balance.h) in every MoE block: α (0 = off) and the
  // d_loss of a micro-batch's summed per-sequence losses, 1 / sequences of the global batch (the
  // reported balance loss is the mean over sequences, summed over MoE layers).
  double balance_alpha = 0;
  double balance_scale = 1;
  // MTP: the d_loss of a micro-batch's summed MTP cross-entropy, λ / D / tokens of the global batch.
  double mtp_loss_scale = 0;
};

// Token ids of one micro-batch: tokens[i] is the input at row i, targets[i] the next token.
struct MicroBatchData {
  std::vector<int32_t> tokens, targets;
  std::vector<int32_t> mtp_targets;  // the token after the target (t_{i+2}); -1 at each sequence's end
};

// Everything one block keeps for one micro-batch between its tasks.
struct BlockState {
  Mat<float> x;      // block input (layers, head)
  Mat<float> h;      // after the attention residual
  Mat<float> xn;     // post-attention RMSNorm output: the MLP's input
  Mat<float> out;    // block output
  Mat<float> d_out;  // gradient at the output (set by the caller before the first backward task)
  Mat<float> d_h, d_xn, dx;
  nn::MlaSaved<float> mla;
  nn::MlaInputGrad<float> mla_g;
  nn::FfnSaved<float> ffn;
  nn::FfnInputGrad<float> ffn_g;
  moe::MoeTokenState<float> tok;
  moe::MoeExpertState<float> exp;
  nn::FfnSaved<float> shared;
  nn::FfnInputGrad<float> shared_g;
  Mat<float> shared_out, dx_routed;
  std::vector<moe::Buffer> send;  // packed, waiting for the next all_to_all_v
  nn::HeadSaved<float> head;
  nn::HeadInputGrad<float> head_g;
  Mat<float> dlogits;
  double loss = 0;
  moe::BalanceLoss<float> balance;  // MoE blocks with balance_alpha > 0: attn_f → attn_b
  double balance_loss = 0;          // its loss · balance_scale
  nn::MtpSaved<float> mtp;          // MTP: the head's input h and the embedded next tokens
  nn::MtpInputGrad<float> mtp_g;
  Mat<float> d_proj_out;            // MTP: gradient at the projection's output (the layer's dx)
};

void attn_f(const BlockContext& c, const BlockParams& p, BlockState& s, const MicroBatchData& data);
void dispatch_f(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label);
void mlp_f(const BlockContext& c, const BlockParams& p, BlockState& s);
void combine_f(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label);
void loss_f(const BlockContext& c, const BlockParams& p, BlockState& s, const MicroBatchData& data);

void combine_b(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label);
void mlp_b(const BlockContext& c, const BlockParams& p, BlockState& s);
void dispatch_b(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label);
void attn_b(const BlockContext& c, const BlockParams& p, BlockState& s);
// Weight passes add into g (routed experts into g.experts_by_src[source member]).
void mlp_w(const BlockContext& c, const BlockParams& p, BlockState& s, BlockGrads& g);
void attn_w(const BlockContext& c, const BlockParams& p, BlockState& s, BlockGrads& g,
            const MicroBatchData& data);

// Frees what backward no longer needs once both weight passes ran. out and dx stay, untouched (a
// pp_send on the comm thread may be reading them), and so do the loss values.
void release(BlockState& s);

}  // namespace tandem::runtime
