#include <cmath>
#include <stdexcept>
#include <string>

#include "exec/spec/mla_config.h"
#include "exec/spec/moe_config.h"
#include "exec/spec/router_config.h"
#include "models/model_card.h"

namespace tandem::spec {

void RouterConfig::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument("RouterConfig: " + what); };
  if (n_routed <= 0) fail("n_routed must be positive");
  if (n_group <= 0 || n_routed % n_group != 0) fail("n_group must divide n_routed");
  if (topk_group < 1 || topk_group > n_group) fail("topk_group must be in [1, n_group]");
  if (top_k < 1 || top_k > topk_group * experts_per_group())
    fail("top_k must be in [1, topk_group * n_routed / n_group]");
}

RouterConfig RouterConfig::from_card(const ModelCard& card) {
  if (card.scoring_func != "sigmoid")
    throw std::invalid_argument("moe router: scoring_func '" + card.scoring_func +
                                "' is not supported (sigmoid only)");
  RouterConfig c;
  c.n_routed = static_cast<int>(card.n_routed_experts);
  c.n_group = static_cast<int>(card.n_group);
  c.topk_group = static_cast<int>(card.topk_group);
  c.top_k = static_cast<int>(card.num_experts_per_tok);
  c.routed_scaling_factor = card.routed_scaling_factor;
  c.norm_topk_prob = card.norm_topk_prob;
  if (card.topk_method == "greedy") {
    c.n_group = 1;
    c.topk_group = 1;
  } else if (card.topk_method != "noaux_tc") {
    throw std::invalid_argument("moe router: topk_method '" + card.topk_method +
                                "' is not supported (noaux_tc or greedy)");
  }
  c.validate();
  return c;
}

EpLayout::EpLayout(int n_routed_experts, int ep_size) : n_routed(n_routed_experts), ep(ep_size) {
  if (ep <= 0 || n_routed <= 0 || n_routed % ep != 0)
    throw std::invalid_argument("EpLayout: ep must divide n_routed (" + std::to_string(n_routed) +
                                " experts, ep " + std::to_string(ep) + ")");
}

MoeConfig MoeConfig::from_card(const ModelCard& card, int ep, Numerics numerics) {
  MoeConfig c;
  c.router = RouterConfig::from_card(card);
  c.ep = EpLayout(c.router.n_routed, ep);
  c.hidden = static_cast<int>(card.hidden_size);
  c.moe_inter = static_cast<int>(card.moe_intermediate_size);
  c.n_shared = static_cast<int>(card.n_shared_experts);
  c.numerics = numerics;
  return c;
}

void MoeConfig::use_deepseek_wires() {
  dispatch_wire = Wire::fp8;
  combine_wire = Wire::bf16;
  combine_grad_wire = Wire::fp8;
  dispatch_grad_wire = Wire::bf16;
}

void MoeConfig::validate() const {
  auto fail = [](const std::string& what) { throw std::invalid_argument("MoeConfig: " + what); };
  router.validate();
  if (ep.ep <= 0 || ep.n_routed != router.n_routed || router.n_routed % ep.ep != 0)
    fail("ep must divide n_routed (the layout's experts are the router's)");
  if (hidden <= 0) fail("hidden must be positive");
  if (moe_inter <= 0) fail("moe_inter must be positive");
  if (n_shared < 0) fail("n_shared must be >= 0");
  if (align <= 0) fail("align must be positive");
}

double MlaConfig::softmax_scale() const { return 1.0 / std::sqrt(static_cast<double>(qk_head())); }

}  // namespace tandem::spec
