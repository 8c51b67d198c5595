#include "sim/step_context.h"

#include <algorithm>
#include <limits>

#include "common/signed_index.h"

namespace tandem {

const A2APlan& StepContext::all_to_all_plan(const A2AGroup& g, int task, int block, double bytes_per_copy) {
  const bool per_group = topo->faults().any();
  const A2APlan** found = per_group ? nullptr : &a2a_plan_of_task[idx(g.rank)][idx(task)];
  if (found != nullptr && *found != nullptr) return **found;
  const auto key = std::make_tuple(g.rank, per_group ? g.first : 0, block, bytes_per_copy);
  auto it = a2a_plans.find(key);
  if (it == a2a_plans.end())
    it = a2a_plans.emplace(key, plan_all_to_all(layout, *topo, g, a2a->ib_efficiency, a2a->nvlink_efficiency)).first;
  if (found != nullptr) *found = &it->second;
  return it->second;
}

// The ring's throughput is its slowest hop's: look at the hops of the first two nodes' worth of
// replicas, which include a hop that leaves the node when the ring spans several.
double StepContext::ring_seconds(int rank, double bytes) const {
  const int n = dp;
  if (n <= 1 || bytes <= 0) return 0;
  double bandwidth = std::numeric_limits<double>::infinity(), latency = 0;
  for (int i = 0; i < std::min(n, 2 * gpn); ++i) {
    const Route r = topo->route(gpu(rank, i), gpu(rank, (i + 1) % n));
    bandwidth = std::min(bandwidth, r.bottleneck_bandwidth);
    latency = std::max(latency, r.latency);
  }
  // Pipelined, as the full tiers' single flow to the next replica: one latency, not n - 1.
  return bytes * (n - 1) / n / bandwidth + latency;
}

}  // namespace tandem
