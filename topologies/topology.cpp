#include "topologies/topology.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include <boost/graph/boykov_kolmogorov_max_flow.hpp>
#include <boost/graph/breadth_first_search.hpp>
#include <boost/graph/compressed_sparse_row_graph.hpp>

#include "common/signed_index.h"

namespace tandem {

namespace {

constexpr int kKinds = 5;

std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// "1 leaf", "8 leaves".
std::string count_of(int n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

void check_index(int i, int n, const char* what) {
  if (i < 0 || i >= n)
    throw std::out_of_range(std::string("Topology: ") + what + " " + std::to_string(i) +
                            " out of range [0, " + std::to_string(n) + ")");
}

// Counts the vertices a breadth-first search discovers.
struct CountingVisitor : boost::default_bfs_visitor {
  int* discovered;
  explicit CountingVisitor(int* d) : discovered(d) {}
  template <class V, class G>
  void discover_vertex(V, const G&) const { ++*discovered; }
};

}  // namespace

const char* to_string(VertexKind k) {
  switch (k) {
    case VertexKind::gpu: return "gpu";
    case VertexKind::nvswitch: return "nvswitch";
    case VertexKind::nic: return "nic";
    case VertexKind::leaf: return "leaf";
    case VertexKind::spine: return "spine";
  }
  return "?";
}

const char* to_string(LinkKind k) {
  switch (k) {
    case LinkKind::nvlink: return "nvlink";
    case LinkKind::pcie: return "pcie";
    case LinkKind::nic: return "nic";
    case LinkKind::uplink: return "uplink";
  }
  return "?";
}

Topology::Topology(const ClusterCard& card, const NetworkFaults& faults) : card_(card), faults_(faults) {
  if (card.nodes < 1 || card.gpus_per_node < 1 || card.nics_per_gpu < 1 ||
      card.fabric.planes < 1 || card.fabric.switch_radix < 2 || card.nics() > (int64_t{1} << 24) ||
      card.nics() % card.fabric.planes != 0)
    throw std::invalid_argument("Topology: the cluster card was not validated");

  nodes_ = static_cast<int>(card.nodes);
  gpus_per_node_ = static_cast<int>(card.gpus_per_node);
  nics_per_gpu_ = static_cast<int>(card.nics_per_gpu);
  nics_per_node_ = gpus_per_node_ * nics_per_gpu_;
  planes_ = static_cast<int>(card.fabric.planes);
  half_radix_ = static_cast<int>(card.fabric.switch_radix / 2);
  const int per_plane = nodes_ * nics_per_node_ / planes_;
  leaves_per_plane_ = (per_plane + half_radix_ - 1) / half_radix_;
  spines_per_plane_ = leaves_per_plane_ > 1
                          ? static_cast<int>(std::clamp<int64_t>(card.fabric.spines_per_plane, 1,
                                                                 half_radix_))
                          : 0;

  count_[0] = nodes_ * gpus_per_node_;
  count_[1] = nodes_;
  count_[2] = nodes_ * nics_per_node_;
  count_[3] = planes_ * leaves_per_plane_;
  count_[4] = planes_ * spines_per_plane_;
  int total = 0;
  for (int k = 0; k < kKinds; ++k) {
    first_[k] = total;
    total += count_[k];
  }

  graph_ = Graph(idx(total));
  kinds_.reserve(idx(total));
  for (int k = 0; k < kKinds; ++k)
    for (int i = 0; i < count_[k]; ++i) {
      auto v = idx(first_[k] + i);
      graph_[v] = VertexProps{static_cast<VertexKind>(k), i};
      kinds_.push_back(static_cast<VertexKind>(k));
    }

  const int physical =
      count_[0] + 2 * count_[2] + planes_ * leaves_per_plane_ * spines_per_plane_;
  links_.reserve(2 * idx(physical));

  const double nvl_bw = card.nvlink_gbytes_s * 1e9;
  const double nvl_lat = card.nvlink_latency_us * 1e-6 / 2;
  const double nic_bw = card.nic_gbytes_s() * 1e9;
  const double nic_lat = card.fabric.latency_same_leaf_us * 1e-6 / 2;
  const double up_lat =
      (card.fabric.latency_cross_leaf_us - card.fabric.latency_same_leaf_us) * 1e-6 / 2;

  nvlink_.resize(idx(count_[0]));
  for (int g = 0; g < count_[0]; ++g)
    nvlink_[idx(g)] = add_link(gpu_vertex(g), nvswitch_vertex(g / gpus_per_node_),
                                               LinkKind::nvlink, -1, nvl_bw, nvl_lat);

  pcie_.resize(idx(count_[2]));
  nic_up_.resize(idx(count_[2]));
  for (int n = 0; n < count_[2]; ++n) {
    const int node = n / nics_per_node_;
    const int gpu = node * gpus_per_node_ + (n % nics_per_node_) / nics_per_gpu_;
    pcie_[idx(n)] = add_link(gpu_vertex(gpu), nic_vertex(n), LinkKind::pcie, -1,
                                             kPcieBytesPerSecond, kPcieLatencySeconds);
    nic_up_[idx(n)] =
        add_link(nic_vertex(n), leaf_vertex(nic_plane(n), nic_leaf(n)), LinkKind::nic,
                 nic_plane(n), nic_bw, nic_lat);
  }

  first_uplink_ = num_physical_links();
  for (int p = 0; p < planes_; ++p)
    for (int l = 0; l < leaves_per_plane_; ++l)
      for (int s = 0; s < spines_per_plane_; ++s)
        add_link(leaf_vertex(p, l), spine_vertex(p, s), LinkKind::uplink, p, nic_bw, up_lat);
  if (faults_.any()) apply_faults();
}

void Topology::apply_faults() {
  auto gpu_ok = [&](int g, const char* what) {
    if (g < 0 || g >= count_[0])
      throw std::invalid_argument(std::string(what) + ": gpu " + std::to_string(g) + " is not in the cluster (" +
                                  std::to_string(count_[0]) + " GPUs)");
  };
  nic_down_.assign(idx(count_[2]), 0);
  for (int p : faults_.failed_planes) {
    if (planes_ == 1)
      throw std::invalid_argument("failed_planes: the fabric has a single plane; with it down no node reaches another");
    if (p < 0 || p >= planes_)
      throw std::invalid_argument("failed_planes: plane " + std::to_string(p) + " is not in the fabric (planes 0.." +
                                  std::to_string(planes_ - 1) + ")");
    for (int n = 0; n < count_[2]; ++n)
      if (nic_plane(n) == p) nic_down_[idx(n)] = 1;
  }
  for (int g : faults_.failed_nics) {
    gpu_ok(g, "failed_nics");
    for (int k = 0; k < nics_per_gpu_; ++k) nic_down_[idx(nic_of(g / gpus_per_node_, g % gpus_per_node_, k))] = 1;
  }
  spine_down_.assign(idx(count_[4]), 0);
  for (int sp : faults_.failed_spines) {
    if (sp < 0 || sp >= count_[4])
      throw std::invalid_argument("failed_spines: spine " + std::to_string(sp) + " is not in the fabric (" +
                                  std::to_string(count_[4]) + " spines: plane x " + std::to_string(spines_per_plane_) + " + spine)");
    spine_down_[idx(sp)] = 1;
  }
  for (int p = 0; p < planes_ && spines_per_plane_ > 0; ++p) {
    bool any_up = false;
    for (int sp = 0; sp < spines_per_plane_; ++sp) any_up = any_up || spine_down_[idx(p * spines_per_plane_ + sp)] == 0;
    if (!any_up)
      throw std::invalid_argument("failed_spines: every spine of plane " + std::to_string(p) +
                                  " is down: its leaves no longer reach each other");
  }
  if (faults_.nic_speed != 1)
    for (int g : faults_.slow_nics) {
      gpu_ok(g, "slow_nics");
      if (!(faults_.nic_speed > 0 && faults_.nic_speed <= 1))
        throw std::invalid_argument("nic_speed: " + std::to_string(faults_.nic_speed) + " is not in (0, 1]");
      for (int k = 0; k < nics_per_gpu_; ++k) {
        const int physical = nic_up_[idx(nic_of(g / gpus_per_node_, g % gpus_per_node_, k))];
        for (int dir = 0; dir < 2; ++dir) {
          Link& l = links_[idx(2 * physical + dir)];
          l.bandwidth = card_.nic_gbytes_s() * 1e9 * faults_.nic_speed;
        }
      }
    }
  // Every pair of nodes needs a route; only a node with a NIC down can lack one (O(nodes) per
  // such node).
  std::vector<int> hurt;
  for (int node = 0; node < nodes_; ++node)
    for (int j = 0; j < nics_per_node_; ++j)
      if (nic_down_[idx(node * nics_per_node_ + j)] != 0) {
        hurt.push_back(node);
        break;
      }
  for (int a : hurt)
    for (int b = 0; b < nodes_; ++b) {
      if (a == b) continue;
      for (int k = 0; k < nics_per_gpu_; ++k)
        for (auto [x, y] : {std::pair{a, b}, std::pair{b, a}})
          if (sending_local(x, 0, y, k) < 0)
            throw std::invalid_argument("failed NICs and planes leave node " + std::to_string(x) + " without a route to node " +
                                        std::to_string(y) + " (no plane with a working NIC on both)");
    }
}

int Topology::sending_local(int src_node, int src_local, int dst_node, int k) const {
  if (nic_down_.empty()) return src_local;
  if (planes_ > 1) {
    // Both ends on one plane: the source's own when it is up at both ends, else one of the
    // planes up at both, chosen by the destination node so that the detoured traffic spreads
    // over the healthy planes rather than doubling one.
    if (nic_up(nic_of(src_node, src_local, k)) && nic_up(nic_of(dst_node, src_local, k))) return src_local;
    int healthy[64], n = 0;
    for (int q = 1; q < gpus_per_node_ && n < 64; ++q) {
      const int local = (src_local + q) % gpus_per_node_;
      if (nic_up(nic_of(src_node, local, k)) && nic_up(nic_of(dst_node, local, k))) healthy[n++] = local;
    }
    return n == 0 ? -1 : healthy[dst_node % n];
  }
  return receiving_local(src_node, src_local, k);  // single plane: each end on its own
}

int Topology::receiving_local(int node, int wanted_local, int k) const {
  if (nic_down_.empty()) return wanted_local;
  for (int q = 0; q < gpus_per_node_; ++q) {
    const int local = (wanted_local + q) % gpus_per_node_;
    if (nic_up(nic_of(node, local, k))) return local;
  }
  return -1;
}

int Topology::add_link(int a, int b, LinkKind kind, int plane, double bandwidth, double latency) {
  const int l = num_physical_links();
  for (int dir = 0; dir < 2; ++dir) {
    Link k;
    k.id = 2 * l + dir;
    k.tail = dir == 0 ? a : b;
    k.head = dir == 0 ? b : a;
    k.kind = kind;
    k.plane = plane;
    k.bandwidth = bandwidth;
    k.latency = latency;
    boost::add_edge(idx(k.tail), idx(k.head),
                    EdgeProps{k.id, bandwidth, latency}, graph_);
    links_.push_back(k);
  }
  return l;
}

int Topology::gpu_vertex(int gpu) const {
  check_index(gpu, count_[0], "GPU");
  return first_[0] + gpu;
}

int Topology::nvswitch_vertex(int node) const {
  check_index(node, count_[1], "node");
  return first_[1] + node;
}

int Topology::nic_vertex(int nic) const {
  check_index(nic, count_[2], "NIC");
  return first_[2] + nic;
}

int Topology::leaf_vertex(int plane, int leaf) const {
  check_index(plane, planes_, "plane");
  check_index(leaf, leaves_per_plane_, "leaf");
  return first_[3] + plane * leaves_per_plane_ + leaf;
}

int Topology::spine_vertex(int plane, int spine) const {
  check_index(plane, planes_, "plane");
  check_index(spine, spines_per_plane_, "spine");
  return first_[4] + plane * spines_per_plane_ + spine;
}

std::string Topology::vertex_name(int vertex) const {
  const VertexKind k = kind(vertex);
  const int i = vertex - first_[static_cast<int>(k)];
  std::string name = to_string(k);
  // Switches as kind<index in plane>.<plane>.
  if (k == VertexKind::leaf)
    return name + std::to_string(i % leaves_per_plane_) + "." +
           std::to_string(i / leaves_per_plane_);
  if (k == VertexKind::spine)
    return name + std::to_string(i % spines_per_plane_) + "." +
           std::to_string(i / spines_per_plane_);
  return name + std::to_string(i);
}

int Topology::nic_plane(int nic) const { return planes_ > 1 ? nic % nics_per_node_ : 0; }

int Topology::nic_position(int nic) const {
  const int node = nic / nics_per_node_;
  if (planes_ > 1) return node;
  return (nic % nics_per_node_) * nodes_ + node;  // rail-major
}

int Topology::uplink(int plane, int leaf, int spine) const {
  return first_uplink_ + (plane * leaves_per_plane_ + leaf) * spines_per_plane_ + spine;
}

void Topology::append(Route& r, int directed_id) const {
  const Link& k = links_[idx(directed_id)];
  r.links.push_back(k);
  r.latency += k.latency;
  r.bottleneck_bandwidth = std::min(r.bottleneck_bandwidth, k.bandwidth);
  ++r.hops;
}

void Topology::append_ib(Route& r, int src_nic, int dst_nic) const {
  const int plane = nic_plane(src_nic);
  const int a = nic_leaf(src_nic), b = nic_leaf(dst_nic);
  append(r, 2 * nic_up_[idx(src_nic)]);
  if (a != b) {
    int spine = nic_position(dst_nic) % spines_per_plane_;  // d-mod-k
    if (!spine_down_.empty())  // the next spine up (apply_faults checked one is)
      while (spine_down_[idx(plane * spines_per_plane_ + spine)] != 0) spine = (spine + 1) % spines_per_plane_;
    append(r, 2 * uplink(plane, a, spine));
    append(r, 2 * uplink(plane, b, spine) + 1);
  }
  append(r, 2 * nic_up_[idx(dst_nic)] + 1);
}

Route Topology::route(int src_gpu, int dst_gpu) const {
  check_index(src_gpu, count_[0], "GPU");
  check_index(dst_gpu, count_[0], "GPU");
  Route r;
  if (src_gpu == dst_gpu) return r;
  const int src_node = src_gpu / gpus_per_node_, dst_node = dst_gpu / gpus_per_node_;
  const int src_local = src_gpu % gpus_per_node_, dst_local = dst_gpu % gpus_per_node_;
  if (src_node == dst_node) {
    append(r, 2 * nvlink_[idx(src_gpu)]);
    append(r, 2 * nvlink_[idx(dst_gpu)] + 1);
    return r;
  }
  r.links.reserve(10);
  const int k = dst_node % nics_per_gpu_;
  // Multi-plane: the receiving GPU is the one with the sender's local index (same plane).
  const int send_local = sending_local(src_node, src_local, dst_node, k);
  const int recv_local = planes_ > 1 ? send_local : receiving_local(dst_node, dst_local, k);
  if (send_local < 0 || recv_local < 0)
    throw std::invalid_argument("Topology::route: no route from gpu" + std::to_string(src_gpu) + " to gpu" +
                                std::to_string(dst_gpu) + " around the failed NICs and planes");
  const int send_gpu = src_node * gpus_per_node_ + send_local;
  const int recv_gpu = dst_node * gpus_per_node_ + recv_local;
  const int src_nic = nic_of(src_node, send_local, k), recv_nic = nic_of(dst_node, recv_local, k);
  if (send_gpu != src_gpu) {  // around this GPU's failed NIC or plane
    r.source_relay_gpu = send_gpu;
    append(r, 2 * nvlink_[idx(src_gpu)]);
    append(r, 2 * nvlink_[idx(send_gpu)] + 1);
  }
  append(r, 2 * pcie_[idx(src_nic)]);
  append_ib(r, src_nic, recv_nic);
  append(r, 2 * pcie_[idx(recv_nic)] + 1);
  if (recv_gpu != dst_gpu) {
    r.relay_gpu = recv_gpu;
    append(r, 2 * nvlink_[idx(recv_gpu)]);
    append(r, 2 * nvlink_[idx(dst_gpu)] + 1);
  }
  return r;
}

bool Topology::connected() const {
  if (num_vertices() == 0) return true;
  int discovered = 0;
  std::vector<boost::default_color_type> color(idx(num_vertices()));
  boost::breadth_first_search(
      graph_, boost::vertex(0, graph_),
      boost::visitor(CountingVisitor(&discovered))
          .color_map(boost::make_iterator_property_map(color.begin(),
                                                       boost::get(boost::vertex_index, graph_))));
  return discovered == num_vertices();
}

double Topology::bisection_bandwidth() const {
  // A compressed-sparse-row flow network; each edge's bundle is its position in `capacity`, and
  // edges 2i and 2i+1 are each other's reverse (a full-duplex link, or a source/sink edge).
  using FlowGraph = boost::compressed_sparse_row_graph<boost::directedS, boost::no_property, int>;
  using FlowEdge = boost::graph_traits<FlowGraph>::edge_descriptor;

  const bool single_node = nodes_ == 1;
  // Source side: GPUs of nodes [0, nodes/2); on one node, GPUs [0, gpus_per_node/2).
  const int source_gpus = single_node ? gpus_per_node_ / 2 : (nodes_ / 2) * gpus_per_node_;
  if (source_gpus == 0 || source_gpus == count_[0]) return 0.0;

  const size_t n = idx(num_vertices());
  const size_t source = n, sink = n + 1;
  std::vector<std::pair<size_t, size_t>> ends;
  std::vector<double> capacity;
  ends.reserve(links_.size() + 2 * idx(count_[0]));
  capacity.reserve(ends.capacity());
  auto add_pair = [&](size_t a, size_t b, double cap) {
    ends.emplace_back(a, b);
    ends.emplace_back(b, a);
    capacity.push_back(cap);
    capacity.push_back(cap);
  };
  double total = 0;
  for (size_t i = 0; i < links_.size(); i += 2) {
    const Link& k = links_[i];
    if (single_node && k.kind != LinkKind::nvlink) continue;
    add_pair(idx(k.tail), idx(k.head), k.bandwidth);
    total += k.bandwidth;
  }
  const double unbounded = 2 * total + 1;  // more than any cut of real links
  for (int g = 0; g < count_[0]; ++g) {
    const auto v = idx(gpu_vertex(g));
    if (g < source_gpus)
      add_pair(source, v, unbounded);
    else
      add_pair(v, sink, unbounded);
  }

  std::vector<int> order(ends.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  FlowGraph fg(boost::edges_are_unsorted_multi_pass, ends.begin(), ends.end(), order.begin(),
               n + 2);

  const size_t m = boost::num_edges(fg);
  std::vector<FlowEdge> by_order(m);
  for (auto [e, end] = boost::edges(fg); e != end; ++e) by_order[idx(fg[*e])] = *e;
  auto index = boost::get(boost::edge_index, fg);
  std::vector<double> cap(m), residual(m);
  std::vector<FlowEdge> reverse(m);
  for (size_t i = 0; i < m; ++i) {
    const size_t at = boost::get(boost::edge_index, fg, by_order[i]);
    cap[at] = capacity[i];
    reverse[at] = by_order[i ^ 1];
  }
  return boost::boykov_kolmogorov_max_flow(
      fg, boost::make_iterator_property_map(cap.begin(), index),
      boost::make_iterator_property_map(residual.begin(), index),
      boost::make_iterator_property_map(reverse.begin(), index),
      boost::get(boost::vertex_index, fg), source, sink);
}

std::string Topology::summary() const {
  const ClusterCard& c = card_;
  std::string s;
  s += "  fabric: " + std::string(to_string(c.fabric.topology)) + ", " + std::to_string(planes_) +
       (planes_ == 1 ? " plane" : " planes") + " of " + std::to_string(c.fabric.switch_radix) +
       "-port switches, " + count_of(leaves_per_plane_, "leaf", "leaves") + " + " +
       count_of(spines_per_plane_, "spine", "spines") + " per plane";
  if (spines_per_plane_ > 0) {
    if (spines_per_plane_ == half_radix_)
      s += " (full bisection)";
    else
      s += " (" + fmt("%.3g", static_cast<double>(half_radix_) / spines_per_plane_) +
           ":1 oversubscribed)";
  }
  s += "\n";
  s += "  vertices: " + count_of(num_gpus(), "GPU", "GPUs") + ", " +
       count_of(num_nvswitches(), "NVSwitch", "NVSwitches") + ", " +
       count_of(num_nics(), "NIC", "NICs") + ", " + count_of(num_leaves(), "leaf", "leaves") +
       ", " + count_of(num_spines(), "spine", "spines") + "\n";
  const int uplinks = planes_ * leaves_per_plane_ * spines_per_plane_;
  s += "  links: " + std::to_string(num_physical_links()) + " physical (" +
       std::to_string(num_links()) + " directed): " + std::to_string(num_gpus()) + " NVLink, " +
       std::to_string(num_nics()) + " PCIe, " + std::to_string(num_nics()) + " NIC-leaf, " +
       std::to_string(uplinks) + " leaf-spine\n";
  s += "  per GPU: NVLink " + fmt("%g", c.nvlink_gbytes_s) + " GB/s per direction (" +
       fmt("%g", c.nvlink_nominal_gbytes_s) + " GB/s nominal bidirectional), " +
       std::to_string(nics_per_gpu_) + " x " + fmt("%g", c.nic_gbytes_s()) + " GB/s NIC (" +
       fmt("%g", c.nic_gbps) + " Gb/s), PCIe " + fmt("%g", kPcieBytesPerSecond / 1e9) +
       " GB/s\n";
  const double bis = bisection_bandwidth();
  if (nodes_ > 1)
    s += "  bisection: " + fmt("%.4g", bis / 1e12) + " TB/s per direction (nodes [0, " +
         std::to_string(nodes_ / 2) + ") vs the rest)\n";
  else
    s += "  bisection: " + fmt("%.4g", bis / 1e12) + " TB/s per direction (NVLink, GPUs [0, " +
         std::to_string(gpus_per_node_ / 2) + ") vs the rest of the node)\n";
  return s;
}

}  // namespace tandem
