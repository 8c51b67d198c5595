// The expert-parallel all-to-all as DeepEP moves it, seen by the simulator: which flows one
// dispatch or combine makes, and how long each member takes when the whole EP group's flows are
// loaded onto the cluster's links at once (the analytic plan).
//
// Placement (sim/engine.h): GPU g = rank * dp + replica; an EP group is `ep` consecutive
// replicas of one pipeline rank, spanning ep / gpus_per_node whole nodes (or part of one).
// DeepEP's two legs from a member: IB to the same-local-index GPU of each other node of the
// group (one copy per destination node: tokens are deduplicated per node), then NVLink from each
// arrival GPU (that node's relay, or the member itself on its own node) to the GPUs of that node
// holding the token's experts. The RoutingPattern says how likely a token reaches each node and
// GPU (balanced or skewed routing).
#pragma once

#include <vector>

#include "common/signed_index.h"
#include "models/routing_fanout.h"
#include "topologies/topology.h"

namespace tandem {

struct EpLayout {
  int dp = 1, ep = 1, gpn = 8;  // data-parallel replicas, EP group size, GPUs per node
  int gpu(int rank, int replica) const { return rank * dp + replica; }
};

struct A2AFlow {
  int from = 0, to = 0;  // GPUs
  double bytes = 0;
};

// One all-to-all task as an EP group sees it: who the members are and where copies go.
struct A2AGroup {
  int rank = 0, first = 0;  // pipeline rank; first replica of the EP group
  int ep = 1, gpn = 1, nodes = 1;
  const RoutingPattern* pattern = nullptr;
  double bytes_per_token = 0;  // tokens each member sends x bytes per copy

  A2AGroup(const EpLayout& l, int gpu, double tokens, double bytes_per_copy, const RoutingPattern& p);
  int gpu(const EpLayout& l, int member) const { return l.gpu(rank, first + member); }
  // IB bytes a member sends to node n (the copies deduplicated per node), and NVLink bytes an
  // arrival GPU forwards to member j (the copies for j's experts).
  double ib(int node) const { return bytes_per_token * pattern->node_hit[idx(node)]; }
  double nvl(int member) const { return bytes_per_token * pattern->gpu_hit[idx(member)]; }
  // per_pair: member j's share of its node's IB bytes (its copies over its node's).
  double ib_share(int member) const;
};

// Member `me`'s flows as a source (and the NVLink legs its arrivals forward). `per_pair`: one IB
// flow per destination GPU (its share of the node's copies) instead of one per destination node.
std::vector<A2AFlow> all_to_all_flows(const EpLayout& l, const A2AGroup& g, int me, bool per_pair);

// The flows of the group that GPU `me_gpu` sends or receives, in O(ep).
std::vector<A2AFlow> flows_touching(const EpLayout& l, const A2AGroup& g, int me_gpu, bool per_pair);

// Per member, how long the transfer takes.
struct A2APlan {
  struct Leg {
    int from, to;  // members
    double seconds;
  };
  std::vector<Leg> legs;
  std::vector<double> seconds;  // per member, when all members start together

  // Per member end times when member m starts at arrive[m]: a flow runs once both its ends are
  // there (a mailbox transfer starts when both sides have posted it). `scale` stretches every
  // transfer (fewer SMs than saturate the links, GEMMs sharing the GPU in training).
  std::vector<double> ends(const std::vector<double>& arrive, double scale = 1.0) const;
};

// The aggregated flows of every member of the group loaded onto their routes; a flow lasts as
// long as the busiest link on its route needs for its load at the rate DeepEP reaches on it
// (`ib_efficiency` of the line rate on the RDMA path — PCIe, NIC, switch links — and
// `nvlink_efficiency` on NVLink; max-min sharing drains a link's flows together) plus its
// route's latency; a member is done when the last flow it sends or receives is. Loads count
// every flow of the group at once, so a flow whose peers started earlier is charged for
// contention it may not have met.
A2APlan plan_all_to_all(const EpLayout& l, const Topology& topo, const A2AGroup& g, double ib_efficiency,
                        double nvlink_efficiency);

}  // namespace tandem
