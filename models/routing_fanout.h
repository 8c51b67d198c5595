// Sampled routing statistics: where a token's top-k experts live, through the model's own gate.
//
// RoutingFanout: per-token averages under balanced routing (what `describe` and the all-to-all
// volumes use). RoutingPattern: per EP-group member and node, for balanced, skewed or measured
// routing (what the simulator's flows and per-GPU expert loads use).
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

#include "common/signed_index.h"
#include "models/model_card.h"
#include "models/routing_histogram.h"

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
//
// Measured: the offsets are fitted instead, so that the same sampler reproduces a measured
// histogram's expert frequencies (RoutingHistogram): starting from b = 0, kFitRounds rounds of
// b_e += step_r log((target_e + 1/2) / (sampled_e + 1/2)) on one fixed sample of tokens, targets
// scaled to the sample's routed rows, step_r = 1/2 x 0.8^max(0, r - kFitHalfSteps); the pattern is that sample's at the last offsets. Fixed rounds and a fixed
// sample: the same histogram always gives the same pattern.
struct RoutingPattern {
  int64_t ep = 1, nodes = 1;
  std::vector<double> rows_per_token;  // per member: expected routed rows a sent token makes there
  std::vector<double> gpu_hit;         // per member: P(a token has an expert there)
  std::vector<double> node_hit;        // per node of the group: P(a token has an expert there)
  std::vector<double> load;            // per member: its rows over the balanced share (1: balanced)
  double max_load = 1;                 // busiest member's load
  std::vector<double> expert_load;     // per routed expert: its rows over the mean (1: balanced)
  double max_expert_load = 1;          // busiest expert's rows over the mean

  // Rows member `d` processes, relative to the balanced share.
  double load_factor(int64_t d) const { return load[idx(d)]; }
};

inline constexpr int kFitRounds = 16;
inline constexpr int kFitHalfSteps = 8;

// The pattern of MoE layer `layer` under the layout's routing: measured when
// layout.routing_histogram is set (throws InputException, naming the histogram's file, if it has
// no counts for `layer`), else skewed when layout.routing_skew > 0, else balanced — the symmetric
// pattern of the fan-out above (every member and node alike). Skewed and measured patterns are
// sampled from the layout's routing_seed and the layer; the same inputs give the same pattern.
// They are kept in memory and on disk ($TANDEM_CACHE_DIR, else ~/.cache/tandem; an empty
// TANDEM_CACHE_DIR turns the disk cache off): a file names every input (for measured routing, a
// hash of the layer's counts and the fit's rounds) and "v2", the sampling's version — change the
// sampling, bump it.
RoutingPattern routing_pattern(const ModelCard& m, const ExpertLayout& layout, int64_t layer);

// Computes the skewed or measured patterns of these layers at once, on the machine's cores (each
// layer's is sampled from its own seed, so the patterns are the ones routing_pattern gives one by
// one): the sampling is the costly part of loading such a scenario (about 2M gate evaluations
// per layer, kFitRounds times that to fit a measured one).
void prefetch_routing_patterns(const ModelCard& m, const ExpertLayout& layout, const std::vector<int64_t>& layers);

// `samples` 0: 8192 tokens, fewer for very many experts so the cost stays bounded (about 2M
// expert scores in all).
RoutingFanout sample_routing_fanout(const ModelCard& m, const ExpertLayout& layout,
                                    int64_t samples = 0);

}  // namespace tandem
