// RouterConfig: the MoE router's shape (DeepSeek-V3's group-limited top-k over sigmoid scores),
// one definition for the CPU reference (exec/ops/router/router.h) and the CUDA router (exec/ops/router/router_cuda.h).
#pragma once

namespace tandem {
struct ModelCard;  // models/model_card.h
}

namespace tandem::spec {

struct RouterConfig {
  int n_routed = 0;     // routed experts E
  int n_group = 1;      // expert groups G (= nodes of the EP group)
  int topk_group = 1;   // groups a token may use (node limit M)
  int top_k = 1;        // experts a token uses K (num_experts_per_tok)
  double routed_scaling_factor = 1.0;  // the CUDA router rounds it to FP32 as the CPU does
  bool norm_topk_prob = true;

  int experts_per_group() const { return n_routed / n_group; }
  // Throws std::invalid_argument unless 0 < top_k <= topk_group · E/G, topk_group <= G, G | E.
  void validate() const;
  // From a model card; requires scoring_func "sigmoid" and topk_method noaux_tc or greedy
  // (std::invalid_argument otherwise).
  static RouterConfig from_card(const ModelCard& card);
};

}  // namespace tandem::spec
