// Sampled routing statistics: where a token's top-k experts live, through the model's own gate.
//
// RoutingFanout: per-token averages under balanced routing (what `describe` and the all-to-all
// volumes use). RoutingPattern: per EP-group member and node, for balanced or skewed routing
// (what the simulator's flows and per-GPU expert loads use).
//
// "Balanced" means expert affinities independent and identically distributed across experts
// and tokens (no expert favoured), with the model's own gate: per-group scores (sum of the two
// best for noaux_tc, best one for group_limited_greedy), the best `node_limit` groups kept, then
// top-k experts among them. Experts are mapped onto the EP group's GPUs in order (E/ep per GPU)
// and GPUs onto nodes (gpus_per_node each). The expectation is estimated from a fixed, seeded
// sample of tokens, so the same inputs always give the same figures.
#pragma once

#include <cstdint>
#include <vector>

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

// Seeded skew: a per-layer, per-expert logit offset b_e ~ N(0, skew^2), the same for every token
// (some experts are popular in that layer), on top of i.i.d. token logits xi ~ N(0, 1); affinity
// sigmoid(xi + b_e) goes through the gate as above. skew 0 is balanced routing.
struct RoutingPattern {
  int64_t ep = 1, nodes = 1;
  std::vector<double> rows_per_token;  // per member: expected routed rows a sent token makes there
  std::vector<double> gpu_hit;         // per member: P(a token has an expert there)
  std::vector<double> node_hit;        // per node of the group: P(a token has an expert there)
  std::vector<double> load;            // per member: its rows over the balanced share (1: balanced)
  double max_load = 1;                 // busiest member's load
  double max_expert_load = 1;          // busiest expert's rows over the mean

  // Rows member `d` processes, relative to the balanced share.
  double load_factor(int64_t d) const { return load[static_cast<size_t>(d)]; }
};

// Balanced: the symmetric pattern of the fan-out above (every member and node alike). Skewed
// (skew > 0): sampled for MoE layer `layer` from `seed`; the same inputs give the same pattern.
// Skewed patterns are kept in memory and on disk ($TANDEM_CACHE_DIR, else ~/.cache/tandem; an
// empty TANDEM_CACHE_DIR turns the disk cache off): a file names every input and "v1", the
// sampling's version — change the sampling, bump it.
RoutingPattern routing_pattern(const ModelCard& m, const ExpertLayout& layout, double skew, int64_t layer);

// Computes the skewed patterns of these layers at once, on the machine's cores (each layer's is
// sampled from its own seed, so the patterns are the ones routing_pattern gives one by one): the
// sampling is the costly part of loading a skewed scenario (about 2M gate evaluations per layer).
void prefetch_routing_patterns(const ModelCard& m, const ExpertLayout& layout, double skew,
                               const std::vector<int64_t>& layers);

// `samples` 0: 8192 tokens, fewer for very many experts so the cost stays bounded (about 2M
// expert scores in all).
RoutingFanout sample_routing_fanout(const ModelCard& m, const ExpertLayout& layout,
                                    int64_t samples = 0);

}  // namespace tandem
