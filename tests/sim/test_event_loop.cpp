// The simulator's event loop (sim/event_loop.h): timers in order, messages matched as a
// mailbox, flows timed by SimGrid's network on the cluster card's fabric. SimGrid allows one
// engine per process, so CTest runs each case in its own process (event_loop_<case>).
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <simgrid/s4u.hpp>

#include "../topologies/cluster_cards.h"
#include "sim/event_loop.h"
#include "topologies/simgrid_platform.h"
#include "topologies/topology.h"

using namespace tandem;
namespace sg4 = simgrid::s4u;

namespace {

std::unique_ptr<sg4::Engine> make_engine() {
  static bool made = false;
  INFO("SimGrid allows one engine per process: run each event loop case on its own (ctest -R event_loop)");
  REQUIRE_FALSE(made);
  made = true;
  return std::make_unique<sg4::Engine>("tandem_event_loop_tests");
}

// Records what it hears, with the loop's clock.
struct Recorder final : EventLoop::Listener {
  explicit Recorder(const EventLoop& l) : loop(l) {}
  struct Heard {
    char what;  // 't' timer, 'd' delivered
    int task, tag;
    double at, began;
  };
  void on_timer(int task, int tag) override { heard.push_back({'t', task, tag, loop.now(), 0}); }
  void on_delivered(int task, double began) override { heard.push_back({'d', task, 0, loop.now(), began}); }
  const EventLoop& loop;
  std::vector<Heard> heard;
};

bool near(double a, double b) { return std::abs(a - b) <= 1e-12 + 1e-9 * std::abs(b); }

// GPU 0 to GPU 1 (same node): one NVLink hop each way through the NVSwitch.
struct Fixture {
  Topology topo{test::cluster_card("h800-2048")};
  std::unique_ptr<sg4::Engine> engine = make_engine();
  SimgridPlatform platform{*engine, topo};
  EventLoop loop{*engine, platform.hosts()};
  Route nvlink = topo.route(0, 1);
  double seconds(double bytes) const { return bytes / nvlink.bottleneck_bandwidth + nvlink.latency; }
};

}  // namespace

TEST_CASE("event loop: timers", "[event_loop]") {
  Fixture f;
  Recorder r(f.loop);
  f.loop.at(2.0, &r, 1);
  f.loop.at(1.0, &r, 2, 7);
  f.loop.at(2.0, &r, 3);  // same time as task 1, set later: rings after it
  f.loop.run();
  REQUIRE(r.heard.size() == 3);
  CHECK(r.heard[0].task == 2);
  CHECK(r.heard[0].tag == 7);
  CHECK(r.heard[0].at == 1.0);
  CHECK(r.heard[1].task == 1);
  CHECK(r.heard[2].task == 3);
  CHECK(f.loop.now() == 2.0);
  CHECK(f.loop.flows_started() == 0);
}

TEST_CASE("event loop: messages", "[event_loop]") {
  Fixture f;
  Recorder sender(f.loop), receiver(f.loop);
  const uint64_t k = EventLoop::key(EventLoop::Channel::pipeline, 0, 5);
  // Two sends posted at 0 on one key, their receives at 1 ms: first posted with first posted, so
  // the 1 GB send goes to the first receive (task 10) and the 2 GB one to the second; both flows
  // start at 1 ms and share the NVLink hop until the smaller one ends.
  f.loop.send(k, 0, 1e9, &sender, 1);
  f.loop.send(k, 0, 2e9, &sender, 2);
  f.loop.at(1e-3, &receiver, -1);
  struct Poster final : EventLoop::Listener {
    EventLoop* loop;
    uint64_t key;
    EventLoop::Listener* who;
    void on_timer(int, int) override {
      loop->receive(key, 1, who, 10);
      loop->receive(key, 1, who, 11);
    }
    void on_delivered(int, double) override {}
  } poster;
  poster.loop = &f.loop;
  poster.key = k;
  poster.who = &receiver;
  f.loop.at(1e-3, &poster, 0);
  // A send nobody receives, and a receive on another key: left unmatched.
  f.loop.send(EventLoop::key(EventLoop::Channel::ring, 0, 1), 0, 1.0, nullptr, -1);
  f.loop.receive(EventLoop::key(EventLoop::Channel::ring, 1, 0), 0, &receiver, 12);
  f.loop.run();

  CHECK(f.loop.flows_started() == 2);
  CHECK(f.loop.unmatched() == 2);
  std::vector<Recorder::Heard> delivered;
  for (const auto& h : receiver.heard)
    if (h.what == 'd') delivered.push_back(h);
  REQUIRE(delivered.size() == 2);
  // Shared: 1 GB each at half the rate, then the rest of the 2 GB alone at the full rate.
  const double bw = f.nvlink.bottleneck_bandwidth, lat = f.nvlink.latency;
  CHECK(delivered[0].task == 10);
  CHECK(near(delivered[0].at, 1e-3 + lat + 2e9 / bw));
  CHECK(delivered[1].task == 11);
  CHECK(near(delivered[1].at, 1e-3 + lat + 3e9 / bw));
  for (const auto& d : delivered) CHECK(d.began == 1e-3);
  // The sender hears about both, at the same times.
  REQUIRE(sender.heard.size() == 2);
  CHECK(sender.heard[0].task == 1);
  CHECK(sender.heard[0].at == delivered[0].at);
  CHECK(sender.heard[1].task == 2);
}

TEST_CASE("event loop: timers between network events", "[event_loop]") {
  Fixture f;
  Recorder r(f.loop);
  // A 1 GB flow from 0, and timers before, during and after it: the flow's end is SimGrid's,
  // and a second flow started by a timer in the middle shares the link from then on.
  const uint64_t k = EventLoop::key(EventLoop::Channel::all_to_all, 0, 1);
  f.loop.send(k, 0, 1e9, &r, 1);
  f.loop.receive(k, 1, &r, 2);
  const double alone = f.seconds(1e9);
  struct Starter final : EventLoop::Listener {
    EventLoop* loop;
    EventLoop::Listener* who;
    void on_timer(int, int) override {
      const uint64_t k2 = EventLoop::key(EventLoop::Channel::all_to_all, 0, 1);
      loop->send(k2, 0, 1e9, who, 3);
      loop->receive(k2, 1, who, 4);
    }
    void on_delivered(int, double) override {}
  } starter;
  starter.loop = &f.loop;
  starter.who = &r;
  f.loop.at(alone / 2, &starter, 0);
  f.loop.at(alone / 4, &r, 5);
  f.loop.at(10 * alone, &r, 6);
  f.loop.run();
  // The second flow waits out its latency, during which the first has the link alone; then
  // they share it half and half until the first ends, and the second finishes alone.
  const double bw = f.nvlink.bottleneck_bandwidth, lat = f.nvlink.latency;
  const double left = 1e9 - (alone / 2) * bw;  // the first flow's bytes when the second shares
  const double first_end = alone / 2 + lat + 2 * left / bw;
  const double second_end = first_end + (1e9 - left) / bw;
  std::vector<int> order;
  for (const auto& h : r.heard) order.push_back(h.task);
  CHECK(order == std::vector<int>{5, 2, 1, 4, 3, 6});
  REQUIRE(r.heard.size() == 6);
  CHECK(near(r.heard[1].at, first_end));
  CHECK(near(r.heard[3].at, second_end));
  CHECK(r.heard[3].began == alone / 2);
  CHECK(r.heard[5].at == 10 * alone);
}
