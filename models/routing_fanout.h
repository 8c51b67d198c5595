// RoutingFanout: where a token's top-k experts live, on average, under balanced routing.
//
// "Balanced" means expert affinities independent and identically distributed across experts
// and tokens (no expert favoured), with the model's own gate: per-group scores (sum of the two
// best for noaux_tc, best one for group_limited_greedy), the best `node_limit` groups kept, then
// top-k experts among them. Experts are mapped onto the EP group's GPUs in order (E/ep per GPU)
// and GPUs onto nodes (gpus_per_node each). The expectation is estimated from a fixed, seeded
// sample of tokens, so the same inputs always give the same figures.
#pragma once

#include <cstdint>

#include "models/model_card.h"

namespace tandem {

struct ExpertLayout;

struct RoutingFanout {
  double dest_nodes = 0;      // distinct nodes holding a token's experts (own node included)
  double remote_nodes = 0;    // distinct nodes other than the sender's: IB crossings per token
  double dest_gpus = 0;       // distinct GPUs holding a token's experts
  double nvlink_sends = 0;    // NVLink copies per token: to own-node GPUs + forwards on arrival
  int64_t samples = 0;
};

// `samples` 0: 8192 tokens, fewer for very many experts so the cost stays bounded (about 2M
// expert scores in all).
RoutingFanout sample_routing_fanout(const ModelCard& m, const ExpertLayout& layout,
                                    int64_t samples = 0);

}  // namespace tandem
