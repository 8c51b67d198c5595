#include "models/routing_fanout.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "models/workload.h"

namespace tandem {

namespace {

// Platform-independent uniform in [0, 1): std::uniform_real_distribution is not.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, std::string, int64_t, int64_t, uint64_t,
                       int64_t>;

}  // namespace

RoutingFanout sample_routing_fanout(const ModelCard& m, const ExpertLayout& layout,
                                    int64_t samples) {
  RoutingFanout out;
  const int64_t E = m.n_routed_experts;
  if (E == 0) return out;
  if (samples <= 0) samples = std::clamp<int64_t>((int64_t{1} << 21) / E, 64, 8192);
  const int64_t G = m.n_group;
  const int64_t limit = layout.node_limit > 0 ? std::min(layout.node_limit, G) : m.topk_group;
  const int64_t k = m.num_experts_per_tok;
  const int64_t ep = std::max<int64_t>(1, layout.ep);
  const int64_t gpn = std::max<int64_t>(1, std::min(layout.gpus_per_node, ep));

  static std::mutex mu;
  static std::map<Key, RoutingFanout> cache;
  const Key key{E, G, limit, k, m.topk_method, ep, gpn, layout.routing_seed, samples};
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }

  const int64_t per_group = E / G;
  const int64_t experts_per_gpu = std::max<int64_t>(1, E / ep);
  std::mt19937_64 rng(layout.routing_seed * 0x9E3779B97F4A7C15ULL + 0x5EEDULL);
  std::vector<double> score(E), group_score(G);
  std::vector<int64_t> groups(G), experts(E);
  std::vector<char> group_kept(G), gpu_hit(ep), node_hit((ep + gpn - 1) / gpn);
  double nodes_sum = 0, remote_sum = 0, gpus_sum = 0, nvl_sum = 0;

  for (int64_t t = 0; t < samples; ++t) {
    for (auto& s : score) s = uniform01(rng);
    std::fill(group_kept.begin(), group_kept.end(), 1);
    if (G > 1 && limit < G) {
      for (int64_t g = 0; g < G; ++g) {
        auto first = score.begin() + g * per_group;
        if (m.topk_method == "noaux_tc" && per_group >= 2) {
          std::vector<double> v(first, first + per_group);
          std::partial_sort(v.begin(), v.begin() + 2, v.end(), std::greater<>());
          group_score[g] = v[0] + v[1];
        } else {
          group_score[g] = *std::max_element(first, first + per_group);
        }
      }
      std::iota(groups.begin(), groups.end(), 0);
      std::partial_sort(groups.begin(), groups.begin() + limit, groups.end(),
                        [&](int64_t a, int64_t b) { return group_score[a] > group_score[b]; });
      std::fill(group_kept.begin(), group_kept.end(), 0);
      for (int64_t i = 0; i < limit; ++i) group_kept[groups[i]] = 1;
    }
    int64_t n_candidates = 0;
    for (int64_t e = 0; e < E; ++e)
      if (group_kept[e / per_group]) experts[n_candidates++] = e;
    std::partial_sort(experts.begin(), experts.begin() + k, experts.begin() + n_candidates,
                      [&](int64_t a, int64_t b) { return score[a] > score[b]; });

    const int64_t src_gpu = t % ep;
    const int64_t src_node = src_gpu / gpn;
    std::fill(gpu_hit.begin(), gpu_hit.end(), 0);
    std::fill(node_hit.begin(), node_hit.end(), 0);
    for (int64_t i = 0; i < k; ++i) {
      const int64_t gpu = std::min(experts[i] / experts_per_gpu, ep - 1);
      gpu_hit[gpu] = 1;
      node_hit[gpu / gpn] = 1;
    }
    for (size_t n = 0; n < node_hit.size(); ++n) {
      if (!node_hit[n]) continue;
      nodes_sum += 1;
      const bool remote = static_cast<int64_t>(n) != src_node;
      remote_sum += remote ? 1 : 0;
      // Arrival GPU on that node: the sender itself, or its same-local-index peer (IB plane).
      const int64_t arrival = remote ? static_cast<int64_t>(n) * gpn + src_gpu % gpn : src_gpu;
      for (int64_t g = static_cast<int64_t>(n) * gpn; g < std::min(ep, (static_cast<int64_t>(n) + 1) * gpn); ++g)
        if (gpu_hit[g] && g != arrival) nvl_sum += 1;
    }
    gpus_sum += static_cast<double>(std::count(gpu_hit.begin(), gpu_hit.end(), 1));
  }
  const double n = static_cast<double>(samples);
  out = RoutingFanout{nodes_sum / n, remote_sum / n, gpus_sum / n, nvl_sum / n, samples};
  std::lock_guard<std::mutex> lock(mu);
  cache.emplace(key, out);
  return out;
}

}  // namespace tandem
