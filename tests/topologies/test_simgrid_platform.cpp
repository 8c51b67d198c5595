// The SimGrid platform of a cluster card. SimGrid 3.32 allows one simgrid::s4u::Engine per
// process, so every test case builds its own engine and CTest runs each case in its own process
// (tests/CMakeLists.txt: simgrid_<case>). Running the binary without a test name runs the first
// case and fails the others with a message saying so.
#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <simgrid/s4u.hpp>

#include "cluster_cards.h"
#include "common/signed_index.h"
#include "topologies/simgrid_platform.h"

using namespace tandem;
namespace sg4 = simgrid::s4u;

namespace {

constexpr double kGB = 1e9;

std::string card_path(const std::string& stem) { return test::cluster_card_path(stem); }
ClusterCard card(const std::string& stem) { return test::cluster_card(stem); }

// The one engine of this process.
std::unique_ptr<sg4::Engine> make_engine() {
  static bool made = false;
  INFO("SimGrid allows one engine per process: run each [simgrid] test case on its own "
       "(ctest -L simgrid, or tandem_simgrid_tests \"<test name>\")");
  REQUIRE_FALSE(made);
  made = true;
  return std::make_unique<sg4::Engine>("tandem_simgrid_tests");
}

long rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      long v = 0;
      in >> v;
      return v;
    }
    in.ignore(1 << 16, '\n');
  }
  return -1;
}

// --- actors (plain functions, mailbox comms: never sendto, which is O(N^2) in SimGrid 3.32) ---

int payload = 0;  // comms carry a pointer to it; only the simulated size matters

std::string mailbox_name(int src, int dst) {
  return "m" + std::to_string(src) + ">" + std::to_string(dst);
}

// Receives `count` messages from src, one after another.
void receiver(int src, int dst, int count) {
  sg4::Mailbox* mb = sg4::Mailbox::by_name(mailbox_name(src, dst));
  for (int i = 0; i < count; ++i) {
    void* data = nullptr;
    mb->get_async<void>(&data)->wait();
  }
}

// Sends bytes to each destination in turn; (*durations)[i] = simulated time of the i-th send.
void sequential_sender(int src, std::vector<int> dsts, double bytes, std::vector<double>* durations) {
  for (int dst : dsts) {
    const double t0 = sg4::Engine::get_clock();
    sg4::Mailbox::by_name(mailbox_name(src, dst))->put_async(&payload, static_cast<uint64_t>(bytes))->wait();
    durations->push_back(sg4::Engine::get_clock() - t0);
  }
}

// One message src -> dst starting at time 0; *finish = its completion time.
void one_sender(int src, int dst, double bytes, double* finish) {
  sg4::Mailbox::by_name(mailbox_name(src, dst))->put_async(&payload, static_cast<uint64_t>(bytes))->wait();
  *finish = sg4::Engine::get_clock();
}

struct Flow {
  int src, dst;
  double finish = -1;
};

// Starts every flow at time 0 and runs the simulation; returns the flows with their finish times.
std::vector<Flow> run_concurrent(sg4::Engine& e, const SimgridPlatform& p, std::vector<Flow> flows,
                                 double bytes) {
  for (Flow& f : flows) {
    sg4::Actor::create("recv", p.host(f.dst), receiver, f.src, f.dst, 1);
    sg4::Actor::create("send", p.host(f.src), one_sender, f.src, f.dst, bytes, &f.finish);
  }
  e.run();
  return flows;
}

// All-to-all among `gpus`: every GPU posts all its sends and receives at once, then waits.
void all_to_all_rank(int me, std::vector<int> gpus, double bytes, double* finish) {
  std::vector<sg4::CommPtr> comms;
  std::vector<void*> data(gpus.size(), nullptr);
  for (size_t i = 0; i < gpus.size(); ++i) {
    if (gpus[i] == me) continue;
    comms.push_back(sg4::Mailbox::by_name(mailbox_name(gpus[i], me))->get_async<void>(&data[i]));
    comms.push_back(sg4::Mailbox::by_name(mailbox_name(me, gpus[i]))
                        ->put_async(&payload, static_cast<uint64_t>(bytes)));
  }
  sg4::Comm::wait_all(comms);
  *finish = sg4::Engine::get_clock();
}

// Asks SimGrid for the route a -> b; *thrown = whether that threw std::logic_error.
void ask_route(const SimgridPlatform* p, int a, int b, bool* thrown) {
  std::vector<sg4::Link*> links;
  try {
    p->host(a)->route_to(p->host(b), links, nullptr);
  } catch (const std::logic_error&) {
    *thrown = true;
  }
}

// Checks that SimGrid's route between two hosts is Topology::route: same links, same order.
void check_route(const SimgridPlatform& p, const Topology& t, int a, int b) {
  INFO("route gpu" << a << " -> gpu" << b);
  std::vector<sg4::Link*> links;
  double latency = 0;
  p.host(a)->route_to(p.host(b), links, &latency);
  const Route r = t.route(a, b);
  if (a == b) {  // the empty route, as SimGrid's free loopback link
    REQUIRE(links.size() == 1);
    CHECK(links[0]->get_name() == "__loopback__");
    CHECK(links[0]->get_bandwidth() >= 1e18);
    CHECK(latency == 0);
    return;
  }
  REQUIRE(links.size() == r.links.size());
  for (size_t i = 0; i < links.size(); ++i) {
    CHECK(links[i] == p.link(r.links[i].id));
    CHECK(links[i]->get_bandwidth() == r.links[i].bandwidth);
  }
  CHECK(latency == Approx(r.latency).epsilon(1e-12).margin(1e-18));
}

bool within(double got, double want, double rel) {
  return std::abs(got - want) <= rel * std::abs(want);
}

}  // namespace

TEST_CASE("simgrid platform: build", "[simgrid]") {
  const Topology t(card("h800-2048"));
  using Clock = std::chrono::steady_clock;
  const auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  const long rss0 = rss_kib();
  const auto t0 = Clock::now();
  auto e = make_engine();
  const auto t1 = Clock::now();
  const long rss1 = rss_kib();
  const std::vector<sg4::Host*> hosts = build_simgrid_platform(*e, t, 1.0);
  const auto t2 = Clock::now();
  const long rss2 = rss_kib();
  WARN("h800-2048 SimGrid platform: " << hosts.size() << " hosts, " << e->get_link_count()
       << " links; engine " << ms(t0, t1) << " ms, RSS +" << (rss1 - rss0) / 1024.0
       << " MiB; platform " << ms(t1, t2) << " ms, RSS +" << (rss2 - rss1) / 1024.0
       << " MiB (process " << rss2 / 1024.0 << " MiB)");

  REQUIRE(hosts.size() == 2048);
  CHECK(e->get_host_count() == 2048);
  // 8192 physical links, each an up and a down SimGrid link, plus CM02's implicit loopback.
  CHECK(t.num_links() == 16384);
  CHECK(e->get_link_count() >= 16384);
  CHECK(e->get_link_count() <= 16385);
  for (int g : {0, 1, 7, 8, 1000, 2047}) {
    CHECK(hosts[idx(g)]->get_name() == "gpu" + std::to_string(g));
    CHECK(sg4::Host::by_name("gpu" + std::to_string(g)) == hosts[idx(g)]);
    CHECK(hosts[idx(g)]->get_speed() == 1.0);
    CHECK(hosts[idx(g)]->get_core_count() == 1);
  }
  // A few links by name, with the card's figures.
  const sg4::Link* nvl = sg4::Link::by_name("gpu9-nvswitch1_UP");
  CHECK(nvl->get_bandwidth() == 160e9);
  CHECK(nvl->get_latency() == Approx(3.33e-6 / 2));
  CHECK(nvl->get_sharing_policy() == sg4::Link::SharingPolicy::SHARED);  // one direction
  CHECK(sg4::Link::by_name("gpu9-nvswitch1_DOWN") != nvl);
  CHECK(sg4::Link::by_name("gpu9-nic9_UP")->get_bandwidth() == 64e9);
  CHECK(sg4::Link::by_name("nic9-leaf0.1_DOWN")->get_bandwidth() == 50e9);
  CHECK(sg4::Link::by_name("nic9-leaf0.1_DOWN")->get_latency() == Approx(1.4e-6));
  CHECK(sg4::Link::by_name("leaf7.7-spine31.7_UP")->get_latency() == Approx(0.45e-6));

  // Only once per engine.
  CHECK_THROWS_AS(build_simgrid_platform(*e, t, 1.0), std::logic_error);
}

TEST_CASE("simgrid platform: routes", "[simgrid]") {
  const Topology t(card("h800-2048"));
  auto e = make_engine();
  const SimgridPlatform p(*e, t, 2e12);
  REQUIRE(p.num_gpus() == 2048);
  REQUIRE(p.num_links() == t.num_links());
  CHECK(p.host(5)->get_speed() == 2e12);

  // Every directed link: name, direction, bandwidth, latency.
  for (int id = 0; id < t.num_links(); ++id) {
    const Link& k = t.link(id);
    const sg4::Link* l = p.link(id);
    REQUIRE(l->get_name() == SimgridPlatform::link_name(t, id / 2) + (id % 2 == 0 ? "_UP" : "_DOWN"));
    REQUIRE(l->get_bandwidth() == k.bandwidth);
    REQUIRE(l->get_latency() == Approx(k.latency).margin(1e-18));
  }
  for (int g = 0; g < p.num_gpus(); ++g) REQUIRE(p.gpu_of(p.host(g)) == g);
  CHECK(p.gpu_of(nullptr) == -1);

  // All pairs among GPUs of nodes on the same leaf, another leaf and the last node.
  std::vector<int> sample;
  for (int node : {0, 1, 2, 31, 32, 40, 255})
    for (int l = 0; l < 8; ++l) sample.push_back(node * 8 + l);
  for (int a : sample)
    for (int b : sample) check_route(p, t, a, b);
  // Random pairs.
  std::mt19937 rng(42);
  std::uniform_int_distribution<int> gpu(0, 2047);
  for (int i = 0; i < 5000; ++i) check_route(p, t, gpu(rng), gpu(rng));

  // A cross-plane route goes through the relay GPU's NVLink.
  std::vector<sg4::Link*> links;
  double latency = 0;
  p.host(0)->route_to(p.host(9), links, &latency);
  REQUIRE(links.size() == 6);
  CHECK(links[4]->get_name() == "gpu8-nvswitch1_UP");
  CHECK(links[5]->get_name() == "gpu9-nvswitch1_DOWN");
  CHECK(latency == Approx((2.8 + 3.33) * 1e-6));
}

TEST_CASE("simgrid platform: p2p", "[simgrid]") {
  const Topology t(card("h800-2048"));
  auto e = make_engine();
  const SimgridPlatform p(*e, t);
  // One 1 GB message at a time from GPU0 to: same node, other node same leaf, cross leaf,
  // cross plane (same leaf), cross plane and cross leaf, itself.
  const std::vector<int> dsts = {1, 8, 8 * 40, 9, 8 * 40 + 3, 0};
  std::vector<double> d;
  for (int dst : dsts) sg4::Actor::create("recv", p.host(dst), receiver, 0, dst, 1);
  sg4::Actor::create("send", p.host(0), sequential_sender, 0, dsts, kGB, &d);
  e->run();
  REQUIRE(d.size() == dsts.size());
  const double nvl = kGB / 160e9, ib = kGB / 50e9;
  CHECK(within(d[0], nvl + 3.33e-6, 1e-6));
  CHECK(within(d[1], ib + 2.8e-6, 1e-6));
  CHECK(within(d[2], ib + 3.7e-6, 1e-6));
  // Forwarded over the relay's NVLink: both latencies, IB-bound.
  CHECK(within(d[3], ib + 2.8e-6 + 3.33e-6, 1e-6));
  CHECK(within(d[4], ib + 3.7e-6 + 3.33e-6, 1e-6));
  // A GPU to itself: free (empty route).
  CHECK(d[5] < 1e-6);
  WARN("1 GB from GPU0 (ms): NVLink " << d[0] * 1e3 << ", same leaf " << d[1] * 1e3 << ", cross leaf "
       << d[2] * 1e3 << ", cross plane " << d[3] * 1e3 << ", cross plane+leaf " << d[4] * 1e3
       << ", self " << d[5] * 1e3);
}

TEST_CASE("simgrid platform: contention", "[simgrid]") {
  const Topology t(card("h800-2048"));
  auto e = make_engine();
  const SimgridPlatform p(*e, t);
  // GPU0 -> GPU8 and GPU0 -> GPU16 share GPU0's PCIe (64 GB/s) and NIC uplink (50 GB/s): each
  // gets 25 GB/s. GPU1 -> GPU2 and GPU3 -> GPU2 share GPU2's NVLink down: 80 GB/s each.
  const auto flows = run_concurrent(*e, p, {{0, 8}, {0, 16}, {1, 2}, {3, 2}}, kGB);
  CHECK(within(flows[0].finish, kGB / 25e9 + 2.8e-6, 1e-6));
  CHECK(within(flows[1].finish, kGB / 25e9 + 2.8e-6, 1e-6));
  CHECK(within(flows[2].finish, kGB / 80e9 + 3.33e-6, 1e-6));
  CHECK(within(flows[3].finish, kGB / 80e9 + 3.33e-6, 1e-6));
}

TEST_CASE("simgrid platform: duplex", "[simgrid]") {
  const Topology t(card("h800-2048"));
  auto e = make_engine();
  const SimgridPlatform p(*e, t);
  // Opposite directions over the same physical links do not interfere (split duplex, and no
  // cross-traffic charge): IB between GPU0 and GPU8, NVLink between GPU1 and GPU2, and a
  // cross-leaf pair.
  const auto flows = run_concurrent(*e, p, {{0, 8}, {8, 0}, {1, 2}, {2, 1}, {3, 8 * 40 + 3}, {8 * 40 + 3, 3}}, kGB);
  CHECK(within(flows[0].finish, kGB / 50e9 + 2.8e-6, 1e-6));
  CHECK(within(flows[1].finish, kGB / 50e9 + 2.8e-6, 1e-6));
  CHECK(within(flows[2].finish, kGB / 160e9 + 3.33e-6, 1e-6));
  CHECK(within(flows[3].finish, kGB / 160e9 + 3.33e-6, 1e-6));
  CHECK(within(flows[4].finish, kGB / 50e9 + 3.7e-6, 1e-6));
  CHECK(within(flows[5].finish, kGB / 50e9 + 3.7e-6, 1e-6));
}

TEST_CASE("simgrid platform: all_to_all", "[simgrid]") {
  // EP64-style all-to-all on 8 nodes of the 8-plane fabric (simgrid-notes §4): 7,340,032 bytes
  // per pair (512 tokens x 7168 x 2 B). Each NIC carries its GPU's 56 inter-node messages (the
  // cross-plane ones as far as the relay GPU), so the bound is 56 x 7.34 MB / 50 GB/s.
  const Topology t(card("h800-2048"));
  auto e = make_engine();
  const SimgridPlatform p(*e, t);
  std::vector<int> gpus;
  for (int g = 0; g < 64; ++g) gpus.push_back(g);
  const double bytes = 7340032;
  std::vector<double> finish(gpus.size(), -1);
  for (size_t i = 0; i < gpus.size(); ++i)
    sg4::Actor::create("a2a", p.host(gpus[i]), all_to_all_rank, gpus[i], gpus, bytes, &finish[i]);
  const auto t0 = std::chrono::steady_clock::now();
  e->run();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double last = 0;
  for (double f : finish) {
    REQUIRE(f > 0);
    last = std::max(last, f);
  }
  const double bound = 56 * bytes / 50e9;  // 8.2208 ms
  WARN("EP64 all-to-all (4032 flows): " << last * 1e3 << " ms simulated (bound " << bound * 1e3
       << " ms), " << secs << " s wall");
  CHECK(last >= bound);
  CHECK(within(last, bound, 1e-3));
}

TEST_CASE("simgrid platform: single_plane", "[simgrid]") {
  // The h800-2048 card on a single-plane rail-optimised fat-tree: no forwarding, GPU0 -> GPU9
  // goes IB straight to GPU9's NIC, which is on another leaf (rail 1).
  YAML::Node n = YAML::Clone(parse_card_file(card_path("h800-2048")));
  n["fabric"]["topology"] = "fat_tree";
  n["fabric"].remove("planes");
  auto c = catch_input_errors([&] { return read_cluster_card(n, "edited.yaml"); });
  REQUIRE(c.ok());
  const Topology t(c.value());
  REQUIRE(t.num_planes() == 1);
  auto e = make_engine();
  const SimgridPlatform p(*e, t, 1.0, SimgridPlatformOptions{.multi_plane_forwarding = false});
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> gpu(0, 2047);
  for (int i = 0; i < 3000; ++i) check_route(p, t, gpu(rng), gpu(rng));
  for (int a = 0; a < 16; ++a)
    for (int b = 0; b < 16; ++b) check_route(p, t, a, b);

  std::vector<double> d;
  const std::vector<int> dsts = {9, 8};
  for (int dst : dsts) sg4::Actor::create("recv", p.host(dst), receiver, 0, dst, 1);
  sg4::Actor::create("send", p.host(0), sequential_sender, 0, dsts, kGB, &d);
  e->run();
  REQUIRE(d.size() == 2);
  CHECK(within(d[0], kGB / 50e9 + 3.7e-6, 1e-6));
  CHECK(within(d[1], kGB / 50e9 + 2.8e-6, 1e-6));
}

TEST_CASE("simgrid platform: no_forwarding", "[simgrid]") {
  const Topology t(card("h800-2048"));
  auto e = make_engine();
  const SimgridPlatform p(*e, t, 1.0, SimgridPlatformOptions{.multi_plane_forwarding = false});
  CHECK_FALSE(p.options().multi_plane_forwarding);
  std::vector<sg4::Link*> links;
  double latency = 0;
  // Cross-plane pairs have no route ...
  CHECK_THROWS_AS(p.host(0)->route_to(p.host(9), links, &latency), std::logic_error);
  CHECK_THROWS_AS(p.host(17)->route_to(p.host(8 * 40 + 3), links, &latency), std::logic_error);
  // ... the others have Topology::route.
  for (int a : {0, 1, 8, 9, 320, 321})
    for (int b : {0, 1, 8, 9, 320, 321})
      if (a / 8 == b / 8 || a % 8 == b % 8) check_route(p, t, a, b);

  // Explicit forwarding: IB to the relay GPU8, then NVLink GPU8 -> GPU9.
  std::vector<double> ib, nvl;
  // Asked from an actor during the simulation, the missing route throws too.
  bool thrown = false;
  sg4::Actor::create("ask", p.host(0), ask_route, &p, 0, 9, &thrown);
  sg4::Actor::create("recv", p.host(8), receiver, 0, 8, 1);
  sg4::Actor::create("recv", p.host(9), receiver, 8, 9, 1);
  sg4::Actor::create("send", p.host(0), sequential_sender, 0, std::vector<int>{8}, kGB, &ib);
  sg4::Actor::create("fwd", p.host(8), sequential_sender, 8, std::vector<int>{9}, kGB, &nvl);
  e->run();
  REQUIRE(ib.size() == 1);
  REQUIRE(nvl.size() == 1);
  CHECK(within(ib[0], kGB / 50e9 + 2.8e-6, 1e-6));
  CHECK(within(nvl[0], kGB / 160e9 + 3.33e-6, 1e-6));
  CHECK(thrown);
}
