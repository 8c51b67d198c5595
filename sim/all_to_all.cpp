#include "sim/all_to_all.h"

#include <algorithm>
#include <map>

#include "common/signed_index.h"

namespace tandem {

A2AGroup::A2AGroup(const EpLayout& l, int gpu, double tokens, double bytes_per_copy, const RoutingPattern& p)
    : rank(gpu / l.dp), ep(l.ep), gpn(std::min(l.gpn, l.ep)), nodes(std::max(1, l.ep / std::min(l.gpn, l.ep))),
      pattern(&p), bytes_per_token(tokens * bytes_per_copy) {
  const int replica = gpu % l.dp;
  first = replica - replica % ep;
}

double A2AGroup::ib_share(int member) const {
  const int n0 = member - member % gpn;
  double total = 0;
  for (int j = n0; j < n0 + gpn; ++j) total += pattern->gpu_hit[idx(j)];
  return total > 0 ? pattern->gpu_hit[idx(member)] / total : 1.0 / gpn;
}

std::vector<A2AFlow> all_to_all_flows(const EpLayout& l, const A2AGroup& g, int me, bool per_pair) {
  std::vector<A2AFlow> flows;
  const int src = g.gpu(l, me), local = me % g.gpn;
  for (int n = 0; n < g.nodes; ++n) {
    const int arrival_member = n * g.gpn + local;
    const int arrival = g.gpu(l, arrival_member);
    const bool remote = n != me / g.gpn;
    for (int j = n * g.gpn; j < (n + 1) * g.gpn; ++j) {
      const int peer = g.gpu(l, j);
      // aggregated: one IB flow per destination node; per_pair: one per destination GPU.
      if (remote && g.ib(n) > 0) {
        if (per_pair) flows.push_back({src, arrival, g.ib(n) * g.ib_share(j)});
        else if (j == arrival_member) flows.push_back({src, arrival, g.ib(n)});
      }
      if (peer != arrival && g.nvl(j) > 0) flows.push_back({arrival, peer, g.nvl(j)});
    }
  }
  return flows;
}

std::vector<A2AFlow> flows_touching(const EpLayout& l, const A2AGroup& g, int me_gpu, bool per_pair) {
  const int me = me_gpu % l.dp - g.first;
  std::vector<A2AFlow> out = all_to_all_flows(l, g, me, per_pair);  // me as the source
  const int my_node = me / g.gpn;
  for (int m = 0; m < g.ep; ++m) {
    if (m == me) continue;
    const int source = g.gpu(l, m), source_node = m / g.gpn;
    const int arrival_member = my_node * g.gpn + m % g.gpn;  // where m's copies land on my node
    if (arrival_member == me) {
      if (source_node != my_node && g.ib(my_node) > 0) {
        if (per_pair) {
          for (int j = my_node * g.gpn; j < (my_node + 1) * g.gpn; ++j)
            out.push_back({source, me_gpu, g.ib(my_node) * g.ib_share(j)});
        } else {
          out.push_back({source, me_gpu, g.ib(my_node)});
        }
      }
      for (int j = my_node * g.gpn; j < (my_node + 1) * g.gpn; ++j)
        if (j != me && g.nvl(j) > 0) out.push_back({me_gpu, g.gpu(l, j), g.nvl(j)});
    } else if (g.nvl(me) > 0) {
      out.push_back({g.gpu(l, arrival_member), me_gpu, g.nvl(me)});
    }
  }
  // Keep only what touches `me` (its own list also holds the legs its arrivals forward).
  out.erase(std::remove_if(out.begin(), out.end(), [me_gpu](const A2AFlow& fl) { return fl.from != me_gpu && fl.to != me_gpu; }),
            out.end());
  return out;
}

std::vector<double> A2APlan::ends(const std::vector<double>& arrive, double scale) const {
  std::vector<double> end = arrive;
  for (const Leg& l : legs) {
    const double e = std::max(arrive[idx(l.from)], arrive[idx(l.to)]) + l.seconds * scale;
    end[idx(l.from)] = std::max(end[idx(l.from)], e);
    end[idx(l.to)] = std::max(end[idx(l.to)], e);
  }
  return end;
}

A2APlan plan_all_to_all(const EpLayout& l, const Topology& topo, const A2AGroup& g0, double ib_efficiency,
                        double nvlink_efficiency) {
  A2AGroup g = g0;
  g.first = 0;
  std::vector<A2AFlow> flows;
  for (int m = 0; m < g.ep; ++m)
    for (const A2AFlow& f : all_to_all_flows(l, g, m, false)) flows.push_back(f);
  std::vector<Route> routes;
  std::map<int, double> load;
  for (const A2AFlow& f : flows) {
    routes.push_back(topo.route(f.from, f.to));
    for (const Link& link : routes.back().links) load[link.id] += f.bytes;
  }
  A2APlan plan;
  for (size_t i = 0; i < flows.size(); ++i) {
    double t = 0;
    for (const Link& link : routes[i].links) {
      const double eff = link.kind == LinkKind::nvlink ? nvlink_efficiency : ib_efficiency;
      t = std::max(t, load[link.id] / (topo.link(link.id).bandwidth * eff));
    }
    plan.legs.push_back({flows[i].from % l.dp - g.first, flows[i].to % l.dp - g.first, t + routes[i].latency});
  }
  plan.seconds = plan.ends(std::vector<double>(idx(g.ep), 0.0));
  return plan;
}

}  // namespace tandem
