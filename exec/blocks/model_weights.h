// The dense weights of a DeepSeek-V3-shaped model (attention, norms, dense FFNs, embedding, head,
// MTP input projections), built from a ModelCard with a seeded, deterministic initialisation.
// Routed experts, the router and the shared expert of MoE layers belong to exec/ops/moe_layer.
//
// Initialisation: every matrix ~ N(0, std²) (DeepSeek-V3: std 0.006), every norm weight = 1.
// Each tensor draws from its own generator seeded by (seed, the tensor's Hugging Face name), so a
// tensor's values do not depend on which other tensors are built (a pipeline stage can build only
// its layers) and are the same with every standard library: mt19937_64 bits through our own
// Box–Muller transform (std::normal_distribution is implementation-defined). Values are drawn in
// double and rounded to T, so float and double weights agree to float rounding.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "exec/ops/attention/attention.h"
#include "exec/ops/linear/ffn.h"
#include "exec/ops/mtp/mtp.h"
#include "exec/ops/tensor.h"
#include "models/model_card.h"

namespace tandem::nn {

template <class T>
struct LayerWeights {
  Vec<T> input_layernorm;            // [hidden]  before attention
  MlaWeights<T> self_attn;
  Vec<T> post_attention_layernorm;   // [hidden]  before the FFN / MoE
  std::optional<FfnWeights<T>> mlp;  // the dense FFN (intermediate_size); absent on MoE layers
};

template <class T>
struct MtpModuleWeights {
  MtpProjWeights<T> input;  // enorm, hnorm, eh_proj
  LayerWeights<T> block;    // the module's transformer block (its FFN is the MoE layer's when MoE)
  Vec<T> norm;              // shared_head.norm: the module's own final norm (proj is shared)
};

template <class T>
struct ModelWeights {
  Mat<T> embed_tokens;              // [vocab, hidden]
  std::vector<LayerWeights<T>> layers;
  Vec<T> norm;                      // final norm [hidden]
  Mat<T> lm_head;                   // [vocab, hidden] (empty when tie_word_embeddings: use embed_tokens)
  std::vector<MtpModuleWeights<T>> mtp;  // num_nextn_predict_layers modules
};

struct InitOptions {
  uint64_t seed = 0;
  double std = 0.006;
  bool zero = false;  // all zeros, norms too (a gradient accumulator of the same shapes)
};

// Layer `layer` (0-based; num_hidden_layers + k is MTP module k's block).
template <class T>
LayerWeights<T> make_layer_weights(const ModelCard& card, int64_t layer, const InitOptions& o);
// MTP module k (0-based).
template <class T>
MtpModuleWeights<T> make_mtp_weights(const ModelCard& card, int64_t k, const InitOptions& o);
template <class T>
ModelWeights<T> make_model_weights(const ModelCard& card, const InitOptions& o);

// Calls f(name, tensor) for every tensor (Mat<T>& or Vec<T>&, const if w is const) in a fixed
// order, with Hugging Face DeepSeek-V3 names ("model.layers.3.self_attn.kv_b_proj.weight", MTP
// module k as layer num_hidden_layers + k). For flattening into AdamW spans, zeroing gradients,
// checkpoints. Absent tensors (q_proj with a q_lora_rank, …) are skipped.
template <class W, class F>
void for_each_layer_tensor(W& l, const std::string& prefix, F&& f) {
  auto visit = [&](const std::string& name, auto& t) {
    if (t.size() > 0) f(prefix + name, t);
  };
  visit("input_layernorm.weight", l.input_layernorm);
  visit("self_attn.q_a_proj.weight", l.self_attn.q_a_proj);
  visit("self_attn.q_a_layernorm.weight", l.self_attn.q_a_layernorm);
  visit("self_attn.q_b_proj.weight", l.self_attn.q_b_proj);
  visit("self_attn.q_proj.weight", l.self_attn.q_proj);
  visit("self_attn.kv_a_proj_with_mqa.weight", l.self_attn.kv_a_proj_with_mqa);
  visit("self_attn.kv_a_layernorm.weight", l.self_attn.kv_a_layernorm);
  visit("self_attn.kv_b_proj.weight", l.self_attn.kv_b_proj);
  visit("self_attn.o_proj.weight", l.self_attn.o_proj);
  visit("post_attention_layernorm.weight", l.post_attention_layernorm);
  if (l.mlp) {
    visit("mlp.gate_proj.weight", l.mlp->gate);
    visit("mlp.up_proj.weight", l.mlp->up);
    visit("mlp.down_proj.weight", l.mlp->down);
  }
}

template <class W, class F>
void for_each_tensor(W& w, F&& f) {
  auto visit = [&](const std::string& name, auto& t) {
    if (t.size() > 0) f(name, t);
  };
  visit("model.embed_tokens.weight", w.embed_tokens);
  for (size_t i = 0; i < w.layers.size(); ++i)
    for_each_layer_tensor(w.layers[i], "model.layers." + std::to_string(i) + ".", f);
  visit("model.norm.weight", w.norm);
  visit("lm_head.weight", w.lm_head);
  for (size_t k = 0; k < w.mtp.size(); ++k) {
    const std::string p = "model.layers." + std::to_string(w.layers.size() + k) + ".";
    visit(p + "enorm.weight", w.mtp[k].input.enorm);
    visit(p + "hnorm.weight", w.mtp[k].input.hnorm);
    visit(p + "eh_proj.weight", w.mtp[k].input.eh_proj);
    for_each_layer_tensor(w.mtp[k].block, p, f);
    visit(p + "shared_head.norm.weight", w.mtp[k].norm);
  }
}

// Number of scalars in all tensors.
template <class T>
int64_t parameter_count(const ModelWeights<T>& w) {
  int64_t n = 0;
  for_each_tensor(w, [&](const std::string&, const auto& t) { n += t.size(); });
  return n;
}

}  // namespace tandem::nn
