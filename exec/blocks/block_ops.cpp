#include "exec/blocks/block_ops.h"

#include <algorithm>
#include <stdexcept>
#include <type_traits>

#include "common/signed_index.h"
#include "exec/ops/embedding/embedding.h"
#include "exec/ops/head/head.h"
#include "exec/ops/embedding/loss.h"
#include "exec/ops/rmsnorm/rmsnorm.h"

namespace tandem::runtime {

namespace {

double eps(const BlockContext& c) { return c.setup->card.rms_norm_eps; }
nn::Numerics num(const BlockContext& c) { return c.setup->numerics; }
bool is_layer(const BlockParams& p) { return p.layer_w.has_value(); }

// route_backward_weight / shared_expert_backward_weight take a MoeGrads: lend them ours (O(1) swaps).
template <class F>
void with_moe_grads(BlockGrads& g, F&& f) {
  moe::MoeGrads<float> mg;
  mg.router.swap(g.dense.moe->router);
  std::swap(mg.shared, g.dense.moe->shared);
  f(mg);
  mg.router.swap(g.dense.moe->router);
  std::swap(mg.shared, g.dense.moe->shared);
}

// Rows [first, first + count) of every matrix of an FFN's saved state / input grad.
nn::FfnSaved<float> rows(const nn::FfnSaved<float>& s, int64_t first, int64_t count) {
  return {s.x.middleRows(first, count), s.gate_out.middleRows(first, count), s.up_out.middleRows(first, count)};
}
nn::FfnInputGrad<float> rows(const nn::FfnInputGrad<float>& g, int64_t first, int64_t count) {
  return {g.dx.middleRows(first, count), g.d_gate_out.middleRows(first, count),
          g.d_up_out.middleRows(first, count), g.swiglu_out.middleRows(first, count)};
}

// The weight gradients of the local experts, one accumulator per source member: the rows a
// source sent to expert e are contiguous in e's segment (segments are ordered by source), so each
// source's contribution is computed from exactly its rows, in the order the source listed them —
// the same rows, in the same order, as the single-rank reference's one source sees.
void experts_weight_by_source(const BlockContext& c, moe::MoeExpertState<float>& es, BlockGrads& g) {
  const auto& L = es.layout;
  for (int e = 0; e < L.n_local; ++e) {
    const size_t ei = idx(e);
    for (int src = 0; src < L.ep; ++src) {
      int64_t first = -1, count = 0;
      for (const auto& place : L.from[idx(src)]) {
        if (place.expert != e) continue;
        if (first < 0) first = place.row;
        if (place.row != first + count) throw std::logic_error("expert rows of a source are not contiguous");
        ++count;
      }
      if (count == 0) continue;
      nn::ffn_backward_weight<float>(rows(es.saved[ei], first, count), rows(es.in_grad[ei], first, count),
                                     es.dy[ei].middleRows(first, count), num(c),
                                     g.experts_by_src[idx(src)][ei]);
    }
  }
  es.saved.clear();
  es.in_grad.clear();
  es.dy.clear();
}

}  // namespace

void attn_f(const BlockContext& c, const BlockParams& p, BlockState& s, const MicroBatchData& data) {
  if (p.kind == BlockKind::embedding) {
    s.out = nn::embedding_forward<float>(p.embed, data.tokens);
    return;
  }
  if (!is_layer(p)) throw std::logic_error("attn_f on a block without attention");
  if (p.mtp) {
    // s.x holds h (the head's input); the layer's input is the projection's output.
    const Mat<float> emb = nn::embedding_forward<float>(p.mtp_embed, data.targets);
    s.x = nn::mtp_input_forward<float>(*p.mtp, s.x, emb, eps(c), num(c), &s.mtp);
  }
  const auto& w = *p.layer_w;
  const Mat<float> xn1 = nn::rmsnorm_forward<float>(s.x, w.input_layernorm, eps(c));
  const Mat<float> a = nn::mla_forward<float>(c.setup->mla, w.self_attn, xn1, c.seq_len, num(c), &s.mla);
  s.h = s.x + a;
  s.xn = nn::rmsnorm_forward<float>(s.h, w.post_attention_layernorm, eps(c));
  if (p.moe) {
    s.tok = moe::route<float>(c.setup->moe, *p.moe, s.xn);
    s.send = moe::dispatch_pack<float>(c.setup->moe, s.tok, s.xn);
    if (c.balance_alpha > 0) {
      s.balance = moe::balance_loss_forward<float>(s.tok.router.routing, s.tok.router.scores,
                                                   static_cast<int>(c.seq_len), c.balance_alpha);
      s.balance_loss = static_cast<double>(s.balance.loss) * c.balance_scale;
    }
  }
}

void dispatch_f(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label) {
  const auto recv = ex(s.send, label);
  s.send.clear();
  s.exp = moe::dispatch_unpack<float>(c.setup->moe, c.member, recv);
}

void mlp_f(const BlockContext& c, const BlockParams& p, BlockState& s) {
  if (p.kind == BlockKind::head) {
    s.out = nn::head_forward<float>(p.norm, p.lm_head, s.x, eps(c), num(c), &s.head);  // logits
    return;
  }
  if (p.moe) {
    moe::experts_forward<float>(c.setup->moe, *p.moe, s.exp);
    s.send = moe::combine_pack<float>(c.setup->moe, s.exp);
    s.shared_out = moe::shared_expert_forward<float>(c.setup->moe, *p.moe, s.xn, &s.shared);
    return;
  }
  s.out = s.h + nn::ffn_forward<float>(*p.layer_w->mlp, s.xn, num(c), &s.ffn);
}

void combine_f(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label) {
  const auto recv = ex(s.send, label);
  s.send.clear();
  const Mat<float> routed = moe::combine<float>(c.setup->moe, s.tok, recv);
  s.out = s.h + (routed + s.shared_out);
  s.shared_out.resize(0, 0);
}

void loss_f(const BlockContext& c, const BlockParams& p, BlockState& s, const MicroBatchData& data) {
  if (p.kind == BlockKind::mtp) {
    const Mat<float>& proj = *p.shared_lm_head;
    const Mat<float> logits = nn::head_forward<float>(p.norm, proj, s.out, eps(c), num(c), &s.head);
    auto ce = nn::cross_entropy<float>(logits, data.mtp_targets, c.mtp_loss_scale);
    s.loss = ce.loss;
    s.dlogits = std::move(ce.dlogits);
    s.head_g = nn::head_backward_input<float>(p.norm, proj, s.head, s.dlogits, eps(c), num(c));
    s.d_out = s.head_g.dh;
    s.out.resize(0, 0);
    return;
  }
  auto ce = nn::cross_entropy<float>(s.out, data.targets, c.loss_scale);
  s.loss = ce.loss;
  s.dlogits = std::move(ce.dlogits);
  s.out.resize(0, 0);  // the logits are not needed any more
}

void combine_b(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label) {
  auto send = moe::combine_backward_pack<float>(c.setup->moe, s.tok, s.d_out);
  const auto recv = ex(send, label);
  moe::combine_backward_unpack<float>(c.setup->moe, s.exp, recv);
}

void mlp_b(const BlockContext& c, const BlockParams& p, BlockState& s) {
  if (p.kind == BlockKind::head) {
    s.head_g = nn::head_backward_input<float>(p.norm, p.lm_head, s.head, s.dlogits, eps(c), num(c));
    // The MTP module's gradient w.r.t. h (its d_out here), head + MTP in that order.
    s.dx = s.d_out.size() > 0 ? Mat<float>(s.head_g.dh + s.d_out) : s.head_g.dh;
    return;
  }
  if (p.moe) {
    moe::experts_backward_input<float>(c.setup->moe, *p.moe, s.exp);
    s.send = moe::dispatch_backward_pack<float>(c.setup->moe, s.exp);
    s.shared_g = moe::shared_expert_backward_input<float>(c.setup->moe, *p.moe, s.shared, s.d_out);
    return;
  }
  s.ffn_g = nn::ffn_backward_input<float>(*p.layer_w->mlp, s.ffn, s.d_out, num(c));
  s.d_xn = s.ffn_g.dx;
}

void dispatch_b(const BlockContext& c, BlockState& s, const Exchange& ex, const std::string& label) {
  const auto recv = ex(s.send, label);
  s.send.clear();
  s.dx_routed = moe::dispatch_backward_unpack<float>(c.setup->moe, s.tok, recv);
}

void attn_b(const BlockContext& c, const BlockParams& p, BlockState& s) {
  if (p.kind == BlockKind::embedding) return;  // token ids have no gradient
  const auto& w = *p.layer_w;
  if (p.moe) {
    Mat<float> d_scores;
    if (c.balance_alpha > 0) {
      d_scores = moe::balance_loss_backward<float>(s.balance, s.tok.router.scores, static_cast<int>(c.seq_len),
                                                   c.balance_alpha, static_cast<float>(c.balance_scale));
      s.balance = {};
    }
    const Mat<float> dx_router =
        moe::route_backward_input<float>(c.setup->moe, *p.moe, s.tok, c.balance_alpha > 0 ? &d_scores : nullptr);
    s.d_xn = (s.dx_routed + dx_router) + s.shared_g.dx;  // moe_layer.h's order
    s.dx_routed.resize(0, 0);
  }
  s.d_h = s.d_out + nn::rmsnorm_backward_input<float>(s.h, w.post_attention_layernorm, eps(c), s.d_xn);
  s.mla_g = nn::mla_backward_input<float>(c.setup->mla, w.self_attn, s.mla, s.d_h, num(c));
  s.dx = s.d_h + nn::rmsnorm_backward_input<float>(s.x, w.input_layernorm, eps(c), s.mla_g.dx);
  if (p.mtp) {
    s.d_proj_out = std::move(s.dx);
    s.mtp_g = nn::mtp_input_backward_input<float>(*p.mtp, s.mtp, s.d_proj_out, eps(c), num(c));
    s.dx = s.mtp_g.dh;
  }
}

void mlp_w(const BlockContext& c, const BlockParams& p, BlockState& s, BlockGrads& g) {
  if (p.kind == BlockKind::head) {
    nn::head_backward_weight<float>(s.head, s.head_g, s.dlogits, eps(c), num(c), g.dense.norm, g.dense.lm_head);
    return;
  }
  if (p.moe) {
    experts_weight_by_source(c, s.exp, g);
    with_moe_grads(g, [&](moe::MoeGrads<float>& mg) {
      moe::shared_expert_backward_weight<float>(c.setup->moe, s.shared, s.shared_g, s.d_out, mg);
    });
  } else {
    nn::ffn_backward_weight<float>(s.ffn, s.ffn_g, s.d_out, num(c), *g.dense.layer_w->mlp);
  }
  if (p.mtp) nn::head_backward_weight<float>(s.head, s.head_g, s.dlogits, eps(c), num(c), g.dense.norm, g.mtp_lm_head);
}

void attn_w(const BlockContext& c, const BlockParams& p, BlockState& s, BlockGrads& g,
            const MicroBatchData& data) {
  if (p.kind == BlockKind::embedding) {
    nn::embedding_backward<float>(data.tokens, s.d_out, g.dense.embed);
    return;
  }
  auto& gw = *g.dense.layer_w;
  nn::rmsnorm_backward_weight<float>(s.h, eps(c), s.d_xn, gw.post_attention_layernorm);
  nn::mla_backward_weight<float>(c.setup->mla, s.mla, s.mla_g, s.d_h, num(c), gw.self_attn);
  nn::rmsnorm_backward_weight<float>(s.x, eps(c), s.mla_g.dx, gw.input_layernorm);
  if (p.moe)
    with_moe_grads(g, [&](moe::MoeGrads<float>& mg) { moe::route_backward_weight<float>(c.setup->moe, s.tok, mg); });
  if (p.mtp) {
    nn::mtp_input_backward_weight<float>(s.mtp, s.mtp_g, s.d_proj_out, eps(c), num(c), *g.dense.mtp);
    nn::embedding_backward<float>(data.targets, s.mtp_g.d_emb, g.mtp_embed);
  }
}

// out and dx are never touched: the comm thread may be sending them right now (pp_send of the
// stage's output or input gradient), so they are not even moved out and back. The loss and the
// balance loss stay too (reported after the step).
void release(BlockState& s) {
  auto reset = [](auto&... m) { ((m = std::remove_reference_t<decltype(m)>{}), ...); };
  reset(s.x, s.h, s.xn, s.d_out, s.d_h, s.d_xn, s.mla, s.mla_g, s.ffn, s.ffn_g, s.tok, s.exp, s.shared,
        s.shared_g, s.shared_out, s.dx_routed, s.send, s.head, s.head_g, s.dlogits, s.balance, s.mtp, s.mtp_g,
        s.d_proj_out);
}

}  // namespace tandem::runtime
