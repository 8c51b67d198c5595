#include "exec/blocks/block_params.h"

#include <stdexcept>

#include "common/signed_index.h"

namespace tandem::runtime {

namespace {

std::span<float> span_of(Mat<float>& m) { return {m.data(), idx(m.size())}; }
std::span<float> span_of(Vec<float>& v) { return {v.data(), idx(v.size())}; }

nn::FfnWeights<float> zeros_like(const nn::FfnWeights<float>& f) {
  return {Mat<float>::Zero(f.gate.rows(), f.gate.cols()), Mat<float>::Zero(f.up.rows(), f.up.cols()),
          Mat<float>::Zero(f.down.rows(), f.down.cols())};
}

// The MoE layer's own seed: one per layer, as init_moe_weights asks.
uint64_t moe_seed(uint64_t seed, int64_t layer) {
  return seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(layer) + 1;
}

void visit_ffn(const std::string& prefix, nn::FfnWeights<float>& f,
               const std::function<void(const std::string&, std::span<float>)>& fn) {
  if (f.gate.size() == 0) return;
  fn(prefix + "gate_proj.weight", span_of(f.gate));
  fn(prefix + "up_proj.weight", span_of(f.up));
  fn(prefix + "down_proj.weight", span_of(f.down));
}

}  // namespace

ModelSetup make_setup(const ModelCard& card, int ep, nn::Numerics numerics, uint64_t seed) {
  ModelSetup s;
  s.card = card;
  s.mla = nn::mla_config(card);
  s.numerics = numerics;
  s.seed = seed;
  if (card.n_routed_experts > 0) {
    s.moe = moe::MoeConfig::from_card(card, ep, numerics);
    // DeepSeek-V3 sends FP8 / BF16 over the wire when it computes in FP8; exact and bf16 runs keep
    // the wire lossless so that only the GEMMs' rounding differs.
    if (numerics == nn::Numerics::fp8) s.moe.use_deepseek_wires();
  }
  return s;
}

BlockParams make_block_params(const ModelSetup& s, const Block& b, int member) {
  BlockParams p;
  p.kind = b.kind;
  p.layer = b.layer;
  const nn::InitOptions init{s.seed, 0.006, false};
  switch (b.kind) {
    case BlockKind::embedding:
    case BlockKind::head: {
      // Every tensor is seeded by its name: a card without layers builds just embedding and head.
      ModelCard bare = s.card;
      bare.num_hidden_layers = 0;
      bare.num_nextn_predict_layers = 0;
      auto w = nn::make_model_weights<float>(bare, init);
      if (b.kind == BlockKind::embedding) {
        p.embed = std::move(w.embed_tokens);
      } else {
        p.norm = std::move(w.norm);
        p.lm_head = std::move(w.lm_head);
      }
      break;
    }
    case BlockKind::dense_layer:
    case BlockKind::moe_layer:
      p.layer_w = nn::make_layer_weights<float>(s.card, b.layer, init);
      if (b.kind == BlockKind::moe_layer)
      {
        p.moe = moe::init_moe_weights<float>(s.moe, member, moe_seed(s.seed, b.layer));
        const Eigen::Index skewed = p.moe->bias.size() / 4;
        for (Eigen::Index e = 0; e < skewed; ++e) p.moe->bias[e] += static_cast<float>(s.router_bias_skew);
      }
      break;
    case BlockKind::mtp: {
      const int64_t depth = b.layer - s.card.num_hidden_layers;
      auto w = nn::make_mtp_weights<float>(s.card, depth, init);
      p.mtp = std::move(w.input);
      p.layer_w = std::move(w.block);
      p.norm = std::move(w.norm);
      if (s.card.is_moe_layer(b.layer)) {
        p.layer_w->mlp.reset();
        p.moe = moe::init_moe_weights<float>(s.moe, member, moe_seed(s.seed, b.layer));
        const Eigen::Index skewed = p.moe->bias.size() / 4;
        for (Eigen::Index e = 0; e < skewed; ++e) p.moe->bias[e] += static_cast<float>(s.router_bias_skew);
      }
      ModelCard bare = s.card;
      bare.num_hidden_layers = 0;
      bare.num_nextn_predict_layers = 0;
      p.mtp_embed = nn::make_model_weights<float>(bare, init).embed_tokens;  // = stage 0's table
      break;
    }
  }
  return p;
}

BlockGrads make_block_grads(const ModelSetup&, const BlockParams& p, int sources) {
  BlockGrads g;
  g.dense.kind = p.kind;
  g.dense.layer = p.layer;
  g.dense.embed = Mat<float>::Zero(p.embed.rows(), p.embed.cols());
  g.dense.norm = Vec<float>::Zero(p.norm.size());
  g.dense.lm_head = Mat<float>::Zero(p.lm_head.rows(), p.lm_head.cols());
  g.mtp_embed = Mat<float>::Zero(p.mtp_embed.rows(), p.mtp_embed.cols());
  if (p.shared_lm_head) g.mtp_lm_head = Mat<float>::Zero(p.shared_lm_head->rows(), p.shared_lm_head->cols());
  if (p.mtp) g.dense.mtp = nn::MtpProjWeights<float>{Vec<float>::Zero(p.mtp->hnorm.size()), Vec<float>::Zero(p.mtp->enorm.size()),
                                                    Mat<float>::Zero(p.mtp->eh_proj.rows(), p.mtp->eh_proj.cols())};
  if (p.layer_w) {
    g.dense.layer_w = *p.layer_w;
    nn::for_each_layer_tensor(*g.dense.layer_w, "", [](const std::string&, auto& t) { t.setZero(); });
  }
  if (p.moe) {
    moe::MoeWeights<float> z;
    z.router = Mat<float>::Zero(p.moe->router.rows(), p.moe->router.cols());
    z.shared = zeros_like(p.moe->shared);
    z.first_expert = p.moe->first_expert;
    g.dense.moe = std::move(z);
    g.experts_by_src.resize(idx(sources));
    for (auto& src : g.experts_by_src)
      for (const auto& e : p.moe->experts) src.push_back(zeros_like(e));
  }
  return g;
}

void link_shared_head(std::vector<BlockParams>& blocks) {
  const Mat<float>* head = nullptr;
  for (const BlockParams& b : blocks)
    if (b.kind == BlockKind::head) head = &b.lm_head;
  for (BlockParams& b : blocks)
    if (b.kind == BlockKind::mtp) {
      if (!head) throw std::logic_error("an MTP block without the head on its stage");
      b.shared_lm_head = head;
    }
}

void for_each_dense(BlockParams& p, const std::function<void(const std::string&, std::span<float>)>& f) {
  if (p.embed.size() > 0) f("model.embed_tokens.weight", span_of(p.embed));
  if (p.layer_w) {
    const std::string prefix = "model.layers." + std::to_string(p.layer) + ".";
    if (p.mtp) {
      f(prefix + "enorm.weight", span_of(p.mtp->enorm));
      f(prefix + "hnorm.weight", span_of(p.mtp->hnorm));
      f(prefix + "eh_proj.weight", span_of(p.mtp->eh_proj));
    }
    nn::for_each_layer_tensor(*p.layer_w, prefix, [&](const std::string& name, auto& t) { f(name, span_of(t)); });
    if (p.moe) {
      // The selection bias is not trained by gradients (aux-loss-free balancing), so it is not here.
      f(prefix + "mlp.gate.weight", span_of(p.moe->router));
      visit_ffn(prefix + "mlp.shared_experts.", p.moe->shared, f);
    }
  }
  if (p.norm.size() > 0)
    f(p.mtp ? "model.layers." + std::to_string(p.layer) + ".shared_head.norm.weight" : "model.norm.weight", span_of(p.norm));
  if (p.lm_head.size() > 0) f("lm_head.weight", span_of(p.lm_head));
}

void for_each_expert(const ModelSetup&, int64_t layer, int first_expert,
                     std::vector<nn::FfnWeights<float>>& experts,
                     const std::function<void(const std::string&, std::span<float>)>& f) {
  const std::string prefix = "model.layers." + std::to_string(layer) + ".mlp.experts.";
  for (size_t e = 0; e < experts.size(); ++e)
    visit_ffn(prefix + std::to_string(first_expert + static_cast<int>(e)) + ".", experts[e], f);
}

}  // namespace tandem::runtime
