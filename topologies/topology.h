// Topology: the physical network of a cluster card as a Boost graph, and the routes the hardware
// takes through it.
//
// Vertices (ids contiguous, in this order; int ids equal the Boost vertex descriptors):
//   GPUs        gpu g is on node g / gpus_per_node with local index g % gpus_per_node
//   NVSwitches  one per node, standing for the node's whole NVSwitch fabric
//   NICs        nic = node * nics_per_node + local_gpu * nics_per_gpu + k (NIC k of that GPU)
//   leaves      per plane, plane-major (plane * leaves_per_plane + leaf)
//   spines      per plane, plane-major (plane * spines_per_plane + spine)
//
// Links: each physical link is two directed links (two graph edges) with the same bandwidth and
// latency. Physical link l has directed ids 2l ("up": away from the GPU) and 2l+1 ("down").
//   kind     ends               bandwidth per direction   latency
//   nvlink   GPU <-> NVSwitch   nvlink_gbytes_s           nvlink_latency_us / 2
//   pcie     GPU <-> each NIC   64 GB/s (1)               0 (1)
//   nic      NIC <-> leaf       nic_gbps / 8              latency_same_leaf_us / 2
//   uplink   leaf <-> spine     nic_gbps / 8 (2)          (latency_cross_leaf_us -
//                                                          latency_same_leaf_us) / 2
//   (1) assumption: PCIe Gen5 x16 is about 64 GB/s per direction; its latency is already part of
//       the measured end-to-end IB latencies.
//   (2) switch ports run at the NIC line rate.
// The end-to-end small-message latencies of the card are thus reproduced exactly: same node
// nvlink_latency_us, same leaf latency_same_leaf_us, cross leaf latency_cross_leaf_us.
//
// Fabric placement, per plane a 2-layer fat-tree of radix R:
//   planes > 1 (multi-plane): NIC j of every node is on plane j; its position in the plane is its
//     node index.
//   planes == 1: every NIC on plane 0, rail-optimised: position = local NIC index * nodes + node,
//     so the NICs of one rail (same local index on every node) fill consecutive leaves.
//   A NIC goes to leaf position / (R/2) of its plane (R/2 down ports per leaf). A plane with more
//   than one leaf has fabric.spines_per_plane spines (default R/2: full bisection) and every leaf
//   has one link to every spine (spines may be partially populated); a plane that fits on one
//   leaf has no spines.
#pragma once

#include <limits>
#include <string>
#include <vector>

#include <boost/graph/adjacency_list.hpp>

#include "common/signed_index.h"
#include "topologies/cluster_card.h"
#include "topologies/network_faults.h"

namespace tandem {

enum class VertexKind { gpu, nvswitch, nic, leaf, spine };
enum class LinkKind { nvlink, pcie, nic, uplink };  // see the table above

const char* to_string(VertexKind k);
const char* to_string(LinkKind k);

inline constexpr double kPcieBytesPerSecond = 64e9;  // per direction, GPU <-> NIC
inline constexpr double kPcieLatencySeconds = 0.0;

// One direction of a physical link.
struct Link {
  int id = -1;         // directed link id (2 * physical + 0 up / 1 down)
  int tail = -1;       // vertex the data leaves
  int head = -1;       // vertex the data enters
  LinkKind kind = LinkKind::nvlink;
  int plane = -1;      // fabric plane for nic/uplink links, -1 for nvlink/pcie
  double bandwidth = 0;  // bytes/s in this direction
  double latency = 0;    // s
};

// A route between two GPUs: the directed links in order, from the source GPU to the destination
// GPU (links[i].head == links[i+1].tail).
struct Route {
  std::vector<Link> links;
  double latency = 0;  // s, the sum of the links' latencies
  double bottleneck_bandwidth = std::numeric_limits<double>::infinity();  // bytes/s, the minimum
  int hops = 0;        // number of links (links.size())
  int relay_gpu = -1;  // the GPU that forwards over NVLink on a cross-plane route, else -1
  int source_relay_gpu = -1;  // around a failed NIC or plane: the GPU whose NIC sends instead
};

class Topology {
 public:
  struct VertexProps {
    VertexKind kind = VertexKind::gpu;
    int index = 0;  // index among the vertices of its kind
  };
  struct EdgeProps {
    int link = -1;  // directed link id
    double bandwidth = 0;
    double latency = 0;
  };
  using Graph = boost::adjacency_list<boost::vecS, boost::vecS, boost::bidirectionalS,
                                      VertexProps, EdgeProps>;

  // Builds the graph. The card must be valid (read_cluster_card checks it); O(vertices + links).
  // With faults, failed NICs and planes carry nothing and routes go around them (see route());
  // throws std::invalid_argument, saying why, when a fault names a plane or GPU the card does
  // not have or leaves some pair of nodes without a route. links() carry the faults (a slow
  // NIC's bandwidth); graph() and bisection_bandwidth() describe the healthy fabric.
  explicit Topology(const ClusterCard& card, const NetworkFaults& faults = {});

  const ClusterCard& card() const { return card_; }
  const Graph& graph() const { return graph_; }

  int num_gpus() const { return count_[0]; }
  int num_nvswitches() const { return count_[1]; }
  int num_nics() const { return count_[2]; }
  int num_leaves() const { return count_[3]; }  // all planes
  int num_spines() const { return count_[4]; }  // all planes
  int count(VertexKind k) const { return count_[static_cast<int>(k)]; }
  int num_vertices() const { return static_cast<int>(kinds_.size()); }
  int num_planes() const { return planes_; }
  int leaves_per_plane() const { return leaves_per_plane_; }
  int spines_per_plane() const { return spines_per_plane_; }
  int num_physical_links() const { return static_cast<int>(links_.size() / 2); }
  int num_links() const { return static_cast<int>(links_.size()); }  // directed

  // Vertex ids. Arguments out of range throw std::out_of_range.
  int gpu_vertex(int gpu) const;
  int nvswitch_vertex(int node) const;
  int nic_vertex(int nic) const;
  int leaf_vertex(int plane, int leaf) const;
  int spine_vertex(int plane, int spine) const;
  VertexKind kind(int vertex) const { return kinds_.at(idx(vertex)); }
  std::string vertex_name(int vertex) const;  // "gpu17", "nvswitch2", "nic17", "leaf3.1", ...

  const Link& link(int id) const { return links_.at(idx(id)); }
  const std::vector<Link>& links() const { return links_; }

  // The route the hardware takes from src_gpu to dst_gpu (GPU indices, not vertex ids):
  //   same GPU: empty route (latency 0, bottleneck +inf, 0 hops).
  //   same node: NVLink, src -> NVSwitch -> dst.
  //   other node: the source GPU sends through its NIC k = dst_node % nics_per_gpu over PCIe.
  //     Multi-plane: IB on that NIC's plane to the GPU with the source's local index on the
  //     destination node (through that node's NIC on the same plane), then NVLink forward to the
  //     destination GPU if its local index differs (DeepEP's dispatch path, deepseek-v3.md §5.1).
  //     Single plane: IB directly to the destination GPU's NIC k.
  //   IB path: NIC -> leaf -> NIC on the same leaf; else NIC -> leaf -> spine -> leaf -> NIC with
  //     the spine chosen by d-mod-k: destination NIC's position in the plane mod spines_per_plane
  //     (the destination node index on a multi-plane fabric).
  // Around faults (a NIC or its plane down): multi-plane, the route takes a plane whose NICs
  //     are up on both nodes — of those after the source's (in local-index order), the one at
  //     destination node mod their count, so detours spread over the healthy planes — NVLink to
  //     the GPU of that local index first, IB on its plane, then NVLink to the destination, as
  //     NCCL's PXN relays; single plane, a failed NIC's traffic goes through the next GPU of its
  //     node with a working NIC, at either end. A failed spine's d-mod-k share goes to the next
  //     spine of its plane that is up (as a subnet manager re-routes its forwarding tables).
  // Deterministic, computed arithmetically (no search). Throws std::out_of_range on bad GPUs.
  Route route(int src_gpu, int dst_gpu) const;
  const NetworkFaults& faults() const { return faults_; }

  // True when every vertex is reachable from every other (BFS over the graph, whose links all
  // come in both directions, so this is connectivity of the undirected view).
  bool connected() const;

  // Bisection bandwidth in bytes/s per direction: the maximum flow (Boykov-Kolmogorov) from a
  // super-source joined with unbounded capacity to every GPU of nodes [0, nodes/2) to a
  // super-sink joined to every GPU of the other nodes, each physical link carrying at most its
  // bandwidth (full duplex, so one direction's capacity bounds a flow that uses it one way).
  // With a single node it is the NVLink bisection instead: GPUs [0, gpus_per_node/2) against the
  // rest, over NVLink only (0 with a single GPU). Builds a flow graph on each call; about a
  // millisecond for 2048 GPUs.
  double bisection_bandwidth() const;

  // Lines for `tandem describe`, each indented by two spaces and ending in a newline (the cluster
  // name is not repeated): fabric shape, vertex and link counts, per-GPU NVLink / NIC / PCIe
  // bandwidth, bisection in TB/s. Computes the bisection (see above).
  std::string summary() const;

 private:
  int add_link(int a, int b, LinkKind kind, int plane, double bandwidth, double latency);
  void apply_faults();
  bool nic_up(int nic) const { return nic_down_.empty() || nic_down_[idx(nic)] == 0; }
  int nic_of(int node, int local, int k) const { return node * nics_per_node_ + local * nics_per_gpu_ + k; }
  // The local index whose NIC k carries a route between these nodes (see route()), or -1.
  int sending_local(int src_node, int src_local, int dst_node, int k) const;
  int receiving_local(int dst_node, int wanted_local, int k) const;
  int nic_plane(int nic) const;
  int nic_position(int nic) const;
  int nic_leaf(int nic) const { return nic_position(nic) / half_radix_; }
  int uplink(int plane, int leaf, int spine) const;  // physical link id
  void append(Route& r, int directed_id) const;
  void append_ib(Route& r, int src_nic, int dst_nic) const;

  ClusterCard card_;
  NetworkFaults faults_;
  std::vector<char> nic_down_;  // per NIC, with faults: 1 when it or its plane is down
  std::vector<char> spine_down_;  // per spine (all planes), with faults
  Graph graph_;
  std::vector<VertexKind> kinds_;
  std::vector<Link> links_;  // by directed id
  int count_[5] = {0, 0, 0, 0, 0};
  int first_[5] = {0, 0, 0, 0, 0};  // first vertex id of each kind
  int gpus_per_node_ = 0, nics_per_gpu_ = 0, nics_per_node_ = 0, nodes_ = 0;
  int planes_ = 1, half_radix_ = 1, leaves_per_plane_ = 0, spines_per_plane_ = 0;
  std::vector<int> nvlink_;  // per GPU: physical link id to its NVSwitch
  std::vector<int> pcie_;    // per NIC: physical link id to its GPU
  std::vector<int> nic_up_;  // per NIC: physical link id to its leaf
  int first_uplink_ = 0;     // physical id of (plane 0, leaf 0, spine 0); plane-, leaf-major
};

}  // namespace tandem
