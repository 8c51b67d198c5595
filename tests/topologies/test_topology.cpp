#include <cmath>
#include <set>
#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>

#include "cluster_cards.h"
#include "common/signed_index.h"
#include "topologies/topology.h"

using namespace tandem;

namespace {

std::string card_path(const std::string& stem) { return test::cluster_card_path(stem); }
ClusterCard card(const std::string& stem) { return test::cluster_card(stem); }

// The h800-2048 card with edits applied to its YAML.
template <class Edit>
ClusterCard h800_with(Edit edit) {
  YAML::Node n = YAML::Clone(parse_card_file(card_path("h800-2048")));
  edit(n);
  auto r = catch_input_errors([&] { return read_cluster_card(n, "edited.yaml"); });
  INFO((r.ok() ? std::string() : r.error().message()));
  REQUIRE(r.ok());
  return r.value();
}

// Checks the invariants of every route: contiguous from src GPU to dst GPU, links are the
// topology's own (and graph edges), totals add up.
void check_route(const Topology& t, int src, int dst) {
  const Route r = t.route(src, dst);
  INFO("route " << src << " -> " << dst);
  REQUIRE(r.hops == static_cast<int>(r.links.size()));
  if (src == dst) {
    CHECK(r.links.empty());
    CHECK(r.latency == 0);
    CHECK(std::isinf(r.bottleneck_bandwidth));
    return;
  }
  REQUIRE_FALSE(r.links.empty());
  CHECK(r.links.front().tail == t.gpu_vertex(src));
  CHECK(r.links.back().head == t.gpu_vertex(dst));
  double latency = 0, bottleneck = r.links.front().bandwidth;
  for (size_t i = 0; i < r.links.size(); ++i) {
    const Link& k = r.links[i];
    const Link& own = t.link(k.id);
    CHECK(own.tail == k.tail);
    CHECK(own.head == k.head);
    auto [e, exists] = boost::edge(idx(k.tail), idx(k.head),
                                   t.graph());
    REQUIRE(exists);
    CHECK(t.graph()[e].link == k.id);
    if (i + 1 < r.links.size()) CHECK(k.head == r.links[i + 1].tail);
    // Only GPUs at the ends or a relay GPU in the middle.
    // Only GPUs at the ends or relay GPUs in the middle.
    if (i > 0 && t.kind(k.tail) == VertexKind::gpu)
      CHECK(((r.relay_gpu >= 0 && k.tail == t.gpu_vertex(r.relay_gpu)) ||
             (r.source_relay_gpu >= 0 && k.tail == t.gpu_vertex(r.source_relay_gpu))));
    // Nothing through a failed plane or NIC (one NIC per GPU: NIC index = GPU index).
    if (k.kind == LinkKind::nic || k.kind == LinkKind::uplink)
      for (int p : t.faults().failed_planes) CHECK(k.plane != p);
    if (k.kind == LinkKind::nic && t.card().nics_per_gpu == 1)
      for (int g : t.faults().failed_nics) CHECK((k.tail != t.nic_vertex(g) && k.head != t.nic_vertex(g)));
    latency += k.latency;
    bottleneck = std::min(bottleneck, k.bandwidth);
  }
  CHECK(r.latency == Approx(latency));
  CHECK(r.bottleneck_bandwidth == bottleneck);
}

}  // namespace

TEST_CASE("h800-2048 topology: vertex and link counts", "[topology]") {
  Topology t(card("h800-2048"));
  CHECK(t.num_gpus() == 2048);
  CHECK(t.num_nvswitches() == 256);
  CHECK(t.num_nics() == 2048);
  CHECK(t.num_planes() == 8);
  CHECK(t.leaves_per_plane() == 8);
  CHECK(t.spines_per_plane() == 32);
  CHECK(t.num_leaves() == 8 * 8);
  CHECK(t.num_spines() == 8 * 32);
  CHECK(t.count(VertexKind::spine) == 256);
  CHECK(t.num_vertices() == 2048 + 256 + 2048 + 64 + 256);
  CHECK(static_cast<int>(boost::num_vertices(t.graph())) == t.num_vertices());
  // NVLink 2048 + PCIe 2048 + NIC-leaf 2048 + leaf-spine 8 planes x 8 leaves x 32 spines.
  CHECK(t.num_physical_links() == 2048 * 3 + 8 * 8 * 32);
  CHECK(t.num_links() == 2 * t.num_physical_links());
  CHECK(static_cast<int>(boost::num_edges(t.graph())) == t.num_links());

  int by_kind[4] = {0, 0, 0, 0};
  for (const Link& k : t.links()) ++by_kind[static_cast<int>(k.kind)];
  CHECK(by_kind[static_cast<int>(LinkKind::nvlink)] == 2 * 2048);
  CHECK(by_kind[static_cast<int>(LinkKind::uplink)] == 2 * 2048);

  CHECK(t.kind(t.gpu_vertex(5)) == VertexKind::gpu);
  CHECK(t.kind(t.nvswitch_vertex(3)) == VertexKind::nvswitch);
  CHECK(t.kind(t.nic_vertex(7)) == VertexKind::nic);
  CHECK(t.kind(t.leaf_vertex(7, 7)) == VertexKind::leaf);
  CHECK(t.kind(t.spine_vertex(7, 31)) == VertexKind::spine);
  CHECK(t.vertex_name(t.leaf_vertex(2, 5)) == "leaf5.2");
  CHECK(t.vertex_name(t.gpu_vertex(17)) == "gpu17");
  CHECK_THROWS_AS(t.gpu_vertex(2048), std::out_of_range);
  CHECK_THROWS_AS(t.spine_vertex(8, 0), std::out_of_range);
  CHECK_THROWS_AS(t.route(-1, 0), std::out_of_range);

  // Each leaf: 32 NICs down, one link to each of the 32 spines up; each spine: 8 leaves.
  const auto leaf = idx(t.leaf_vertex(3, 2));
  CHECK(boost::out_degree(leaf, t.graph()) == 64);
  CHECK(boost::in_degree(leaf, t.graph()) == 64);
  CHECK(boost::out_degree(idx(t.spine_vertex(3, 2)), t.graph()) == 8);
}

TEST_CASE("topologies are connected", "[topology]") {
  for (const char* stem : {"h800-2048", "h100-1024", "h200-2048", "h100-1gpu"}) {
    INFO(stem);
    CHECK(Topology(card(stem)).connected());
  }
}

TEST_CASE("h800-2048 routes follow the hardware", "[topology]") {
  Topology t(card("h800-2048"));

  SECTION("same node: NVLink through the NVSwitch") {
    Route r = t.route(0, 3);
    REQUIRE(r.hops == 2);
    CHECK(r.links[0].kind == LinkKind::nvlink);
    CHECK(r.links[1].kind == LinkKind::nvlink);
    CHECK(r.links[0].head == t.nvswitch_vertex(0));
    CHECK(r.latency == Approx(3.33e-6));
    CHECK(r.bottleneck_bandwidth == Approx(160e9));
    CHECK(r.relay_gpu == -1);
    check_route(t, 0, 3);
  }
  SECTION("same plane, same leaf: GPU-NIC-leaf-NIC-GPU") {
    Route r = t.route(0, 8);  // node 0 GPU 0 -> node 1 GPU 0
    REQUIRE(r.hops == 4);
    CHECK(r.links[0].kind == LinkKind::pcie);
    CHECK(r.links[1].kind == LinkKind::nic);
    CHECK(r.links[1].head == t.leaf_vertex(0, 0));
    CHECK(r.links[2].kind == LinkKind::nic);
    CHECK(r.links[3].kind == LinkKind::pcie);
    CHECK(r.latency == Approx(2.8e-6));
    CHECK(r.bottleneck_bandwidth == Approx(50e9));
    check_route(t, 0, 8);
  }
  SECTION("same plane, cross leaf: up to the d-mod-k spine and down") {
    const int dst = 40 * 8 + 5;  // node 40 (leaf 1) GPU 5: plane 5
    Route r = t.route(5, dst);
    REQUIRE(r.hops == 6);
    CHECK(r.links[1].head == t.leaf_vertex(5, 0));
    CHECK(r.links[2].kind == LinkKind::uplink);
    CHECK(r.links[2].head == t.spine_vertex(5, 40 % 32));
    CHECK(r.links[3].head == t.leaf_vertex(5, 1));
    CHECK(r.latency == Approx(3.7e-6));
    CHECK(r.bottleneck_bandwidth == Approx(50e9));
    check_route(t, 5, dst);
  }
  SECTION("cross plane: IB on the source's plane, then NVLink forward") {
    const int dst = 40 * 8 + 3;  // node 40 GPU 3; source node 0 GPU 1 is on plane 1
    Route r = t.route(1, dst);
    REQUIRE(r.hops == 8);
    CHECK(r.relay_gpu == 40 * 8 + 1);
    CHECK(r.links[1].plane == 1);
    CHECK(r.links[5].head == t.gpu_vertex(40 * 8 + 1));
    CHECK(r.links[6].kind == LinkKind::nvlink);
    CHECK(r.links[7].kind == LinkKind::nvlink);
    CHECK(r.latency == Approx(3.7e-6 + 3.33e-6));
    CHECK(r.bottleneck_bandwidth == Approx(50e9));
    check_route(t, 1, dst);

    Route same_leaf = t.route(1, 8 + 3);  // node 1 GPU 3, same leaf
    CHECK(same_leaf.hops == 6);
    CHECK(same_leaf.relay_gpu == 8 + 1);
    CHECK(same_leaf.latency == Approx(2.8e-6 + 3.33e-6));
  }
  SECTION("same GPU: empty route") { check_route(t, 7, 7); }
  SECTION("a sample of all pairs") {
    for (int src = 0; src < 2048; src += 67)
      for (int dst = 0; dst < 2048; dst += 13) check_route(t, src, dst);
  }
}

TEST_CASE("every route of a small multi-plane cluster is well formed", "[topology]") {
  // 30 nodes, 8 planes of 8-port switches: 8 leaves (the last half full), 4 spines per plane.
  ClusterCard c = h800_with([](YAML::Node& n) {
    n["nodes"] = 30;
    n["fabric"]["switch_radix"] = 8;
  });
  Topology t(c);
  CHECK(t.leaves_per_plane() == 8);
  CHECK(t.spines_per_plane() == 4);
  CHECK(t.connected());
  for (int s = 0; s < t.num_gpus(); ++s)
    for (int d = 0; d < t.num_gpus(); ++d) check_route(t, s, d);
  // Nodes [0, 15) vs [15, 30): leaves 0-2 and half of leaf 3 against the rest; the cut of the
  // NIC links (15 nodes x 8 NICs x 50 GB/s) is the smallest.
  CHECK(t.bisection_bandwidth() == Approx(15 * 8 * 50e9).epsilon(1e-9));
}

TEST_CASE("single-plane rail-optimised fat tree", "[topology]") {
  ClusterCard c = h800_with([](YAML::Node& n) {
    n["fabric"]["topology"] = "fat_tree";
    n["fabric"].remove("planes");
    n["fabric"]["switch_radix"] = 128;
  });
  Topology t(c);
  CHECK(t.num_planes() == 1);
  CHECK(t.leaves_per_plane() == 32);  // 2048 NICs / 64 down ports
  CHECK(t.spines_per_plane() == 64);
  CHECK(t.connected());
  // Rail-major placement: rail i of nodes [64k, 64k+64) share leaf 4i + k.
  Route same_rail = t.route(0, 63 * 8);  // node 0 GPU 0 -> node 63 GPU 0: leaf 0
  CHECK(same_rail.hops == 4);
  CHECK(same_rail.links[1].head == t.leaf_vertex(0, 0));
  Route other_rail = t.route(0, 8 + 1);  // node 1 GPU 1: rail 1 is on leaf 4; direct, no relay
  CHECK(other_rail.hops == 6);
  CHECK(other_rail.relay_gpu == -1);
  CHECK(other_rail.links[3].head == t.leaf_vertex(0, 4));
  CHECK(other_rail.latency == Approx(3.7e-6));
  for (int src = 0; src < 2048; src += 97)
    for (int dst = 0; dst < 2048; dst += 31) check_route(t, src, dst);
  CHECK(t.bisection_bandwidth() == Approx(51.2e12).epsilon(1e-9));
}

TEST_CASE("routes around failed planes and NICs", "[topology]") {
  ClusterCard c = h800_with([](YAML::Node& n) {
    n["nodes"] = 30;
    n["fabric"]["switch_radix"] = 8;
  });
  SECTION("a failed plane: detours over the healthy planes, relayed over NVLink at both ends") {
    NetworkFaults f;
    f.failed_planes = {0};
    const Topology t(c, f);
    for (int s = 0; s < t.num_gpus(); s += 3)
      for (int d = 0; d < t.num_gpus(); d += 5) check_route(t, s, d);
    // GPU 0 (plane 0) to GPU 8 (node 1, plane 0): NVLink to a GPU of another plane on node 0,
    // IB on that plane, NVLink to GPU 8.
    const Route r = t.route(0, 8);
    REQUIRE(r.source_relay_gpu >= 1);
    REQUIRE(r.source_relay_gpu < 8);
    CHECK(r.relay_gpu == 8 + r.source_relay_gpu);
    // The detours spread: destinations on different nodes use different planes.
    std::set<int> planes;
    for (int node = 1; node < 30; ++node) planes.insert(t.route(0, node * 8).source_relay_gpu);
    CHECK(planes.size() == 7);
    // Healthy planes keep their direct routes.
    CHECK(t.route(1, 9).source_relay_gpu == -1);
    CHECK(t.route(1, 9).relay_gpu == -1);
  }
  SECTION("a failed NIC: its GPU's traffic goes through a node neighbour, both ways") {
    NetworkFaults f;
    f.failed_nics = {9};
    const Topology t(c, f);
    for (int s = 0; s < t.num_gpus(); s += 3) check_route(t, s, 9), check_route(t, 9, s);
    CHECK(t.route(9, 17).source_relay_gpu / 8 == 1);
    CHECK(t.route(17, 9).relay_gpu / 8 == 1);
    CHECK(t.route(17, 9).relay_gpu != 9);
    CHECK(t.route(0, 8).source_relay_gpu == -1);  // other planes' routes are untouched
  }
  SECTION("a failed spine: its d-mod-k share moves to the next spine of its plane") {
    // 30 nodes on 8-port switches: 8 leaves and 4 spines per plane; node n's NIC is at position n.
    const Topology healthy(c);
    NetworkFaults f;
    f.failed_spines = {1};  // plane 0, spine 1
    const Topology t(c, f);
    for (int s = 0; s < t.num_gpus(); s += 7)
      for (int d = 0; d < t.num_gpus(); d += 11) check_route(t, s, d);
    auto spine_of = [](const Route& r) {
      for (const Link& k : r.links)
        if (k.kind == LinkKind::uplink) return k.head;
      return -1;
    };
    // GPU 0 -> node 5 (position 5: spine 1 by d-mod-k) on plane 0: spine 2 instead.
    CHECK(spine_of(healthy.route(0, 5 * 8)) == healthy.spine_vertex(0, 1));
    CHECK(spine_of(t.route(0, 5 * 8)) == t.spine_vertex(0, 2));
    CHECK(spine_of(t.route(1, 5 * 8 + 1)) == t.spine_vertex(1, 1));  // plane 1's spine 1 is up
    NetworkFaults all;
    all.failed_spines = {0, 1, 2, 3};
    CHECK_THROWS_WITH(Topology(c, all), Catch::Contains("every spine of plane 0 is down"));
  }
  SECTION("a slow NIC runs at its fraction of the line rate") {
    NetworkFaults f;
    f.slow_nics = {9};
    f.nic_speed = 0.5;
    const Topology t(c, f);
    CHECK(t.route(9, 17).bottleneck_bandwidth == Approx(25e9));
    CHECK(t.route(1, 17).bottleneck_bandwidth == Approx(50e9));
  }
  SECTION("faults that leave no route, or name what is not there") {
    NetworkFaults f;
    f.failed_nics = {0, 1, 2, 3, 4, 5, 6, 7};  // node 0 cut off
    CHECK_THROWS_WITH(Topology(c, f), Catch::Contains("without a route"));
    NetworkFaults g;
    g.failed_planes = {8};
    CHECK_THROWS_WITH(Topology(c, g), Catch::Contains("plane 8 is not in the fabric"));
    NetworkFaults h;
    h.failed_nics = {240};
    CHECK_THROWS_WITH(Topology(c, h), Catch::Contains("gpu 240 is not in the cluster"));
  }
}

TEST_CASE("two NICs per GPU", "[topology]") {
  ClusterCard c = h800_with([](YAML::Node& n) {
    n["nics_per_gpu"] = 2;
    n["fabric"]["planes"] = 16;
  });
  Topology t(c);
  CHECK(t.num_nics() == 4096);
  CHECK(t.num_planes() == 16);
  CHECK(t.connected());
  // Node 1 is odd: the source uses its second NIC, on plane 2 * local + 1.
  Route r = t.route(2, 8 + 2);
  REQUIRE(r.hops == 4);
  CHECK(r.links[1].plane == 5);
  for (int src = 0; src < 2048; src += 61)
    for (int dst = 0; dst < 2048; dst += 29) check_route(t, src, dst);
  CHECK(t.bisection_bandwidth() == Approx(128 * 16 * 50e9).epsilon(1e-9));
}

TEST_CASE("bisection bandwidth", "[topology]") {
  SECTION("h800-2048: full bisection, 128 nodes x 8 NICs x 50 GB/s") {
    CHECK(Topology(card("h800-2048")).bisection_bandwidth() == Approx(51.2e12).epsilon(1e-9));
  }
  SECTION("h100-1024") {
    CHECK(Topology(card("h100-1024")).bisection_bandwidth() == Approx(25.6e12).epsilon(1e-9));
  }
  SECTION("4:1 oversubscribed: 8 spines per plane instead of 32") {
    ClusterCard c = h800_with([](YAML::Node& n) { n["fabric"]["spines_per_plane"] = 8; });
    Topology t(c);
    CHECK(t.spines_per_plane() == 8);
    CHECK(t.bisection_bandwidth() == Approx(51.2e12 / 4).epsilon(1e-9));
    CHECK(t.summary().find("4:1 oversubscribed") != std::string::npos);
  }
  SECTION("one node of 8 GPUs: the NVLink bisection") {
    ClusterCard c = h800_with([](YAML::Node& n) { n["nodes"] = 1; });
    Topology t(c);
    CHECK(t.num_spines() == 0);
    CHECK(t.bisection_bandwidth() == Approx(4 * 160e9).epsilon(1e-9));
  }
  SECTION("odd node count: nodes [0, 1) against [1, 3)") {
    ClusterCard c = h800_with([](YAML::Node& n) { n["nodes"] = 3; });
    CHECK(Topology(c).bisection_bandwidth() == Approx(8 * 50e9).epsilon(1e-9));
  }
  SECTION("h100-1gpu: nothing to bisect") {
    Topology t(card("h100-1gpu"));
    CHECK(t.num_gpus() == 1);
    CHECK(t.num_nvswitches() == 1);
    CHECK(t.num_nics() == 1);
    CHECK(t.num_leaves() == 1);
    CHECK(t.num_spines() == 0);
    CHECK(t.bisection_bandwidth() == 0);
    check_route(t, 0, 0);
    CHECK_FALSE(t.summary().empty());
  }
}

TEST_CASE("summary", "[topology]") {
  const std::string s = Topology(card("h800-2048")).summary();
  INFO(s);
  CHECK(s.find("2048 GPUs") != std::string::npos);
  CHECK(s.find("256 NVSwitches") != std::string::npos);
  CHECK(s.find("2048 NICs") != std::string::npos);
  CHECK(s.find("64 leaves") != std::string::npos);
  CHECK(s.find("256 spines") != std::string::npos);
  CHECK(s.find("51.2 TB/s") != std::string::npos);
  CHECK(s.find("NVLink 160 GB/s") != std::string::npos);
  CHECK(s.find("50 GB/s NIC") != std::string::npos);
  CHECK(s.find("full bisection") != std::string::npos);
}
