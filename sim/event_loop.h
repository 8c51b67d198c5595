// The simulator's clock: every GPU's timers in one queue, the network's flows on SimGrid.
//
// GPUs are not SimGrid actors. Each is a state machine (sim/engine.cpp) whose kernels and
// analytic transfers are timers here, and whose messages — pipeline sends, ring hops,
// all-to-all flows — are flows on SimGrid's network model. Most of a step's ~5,000 tasks per GPU
// only take time; as actors each one cost a context switch and a SimGrid wait, here it is a heap
// operation. SimGrid stays the engine of record for the network: a flow's rate is its max-min
// share of its route's links and its end is SimGrid's. The loop moves SimGrid's clock only to
// start flows or to the network's own next event (a latency ending, a flow completing), which
// it asks SimGrid's models for, as SimGrid's engine does.
//
// A flow is a mailbox comm between two carrier actors, one on each end's host: a carrier takes
// the flow ends its host starts at one moment (an all-to-all's dozens), posts them, waits for
// each, then waits, suspended, for its next batch (a pool per host, grown as needed). Not a
// host-to-host comm started from the loop: SimGrid 3.32 keeps those in one list that it scans
// each time one ends, O(flows in flight) per flow — 12x slower at 512 GPUs in the aggregated
// tier, where ~100,000 are in flight at once; a carrier's list holds its own batch only.
//
// Contract:
//  - Timers ring in time order; equal times in the order they were set. Flows completing at the
//    same time are delivered in the order SimGrid's actors see them end. The same inputs give
//    the same run, bit for bit.
//  - A message is matched by its key, first posted with first posted (a mailbox's order); its
//    flow starts when both ends have posted and carries max(bytes, 1) bytes.
//  - run() returns when no timer is set and no flow is in flight (its carriers have ended).
//    Messages left unmatched then are counted by unmatched().
//  - One EventLoop per SimGrid engine and one running at a time (SimGrid's engine is a
//    process-wide singleton).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <queue>
#include <unordered_map>
#include <vector>

namespace simgrid::s4u {
class Host;
class Engine;
class Mailbox;
}  // namespace simgrid::s4u

namespace tandem {

class EventLoop {
 public:
  // What a GPU's state machine hears from the loop.
  class Listener {
   public:
    virtual void on_timer(int task, int tag) = 0;
    // A message this listener posted (either end) has been delivered; its flow began at `began`.
    virtual void on_delivered(int task, double began) = 0;

   protected:
    ~Listener() = default;
  };

  // Messages are matched by key: a channel and two numbers (e.g. sender and receiver GPUs).
  enum class Channel : uint64_t { pipeline = 0, ring = 1, all_to_all = 2 };
  static uint64_t key(Channel c, int a, int b);

  // `hosts[g]` is GPU g's host on the engine's platform.
  EventLoop(simgrid::s4u::Engine& engine, std::vector<simgrid::s4u::Host*> hosts);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  double now() const { return now_; }
  // Rings `who->on_timer(task, tag)` at `time` (not before now).
  void at(double time, Listener* who, int task, int tag = 0);
  // One end of a message. `who` is told when it is delivered; a null `who` (a send no task waits
  // for) is not.
  void send(uint64_t key, int from_gpu, double bytes, Listener* who, int task);
  void receive(uint64_t key, int to_gpu, Listener* who, int task);

  void run();
  size_t unmatched() const;
  // What the run did, for the benchmark notes.
  size_t timers_rung() const { return timers_rung_; }
  size_t flows_started() const { return flows_started_; }
  size_t network_steps() const { return network_steps_; }

 private:
  struct Timer {
    double at;
    uint64_t order;
    Listener* who;
    int task, tag;
  };
  struct Later {
    bool operator()(const Timer& a, const Timer& b) const {
      return a.at > b.at || (a.at == b.at && a.order > b.order);
    }
  };
  struct End {
    int gpu = -1;
    Listener* who = nullptr;
    int task = -1;
    double bytes = 0;
  };
  struct Posted {  // one key's ends waiting for their other end, oldest first
    std::vector<End> sends, receives;
  };
  struct Flow;
  struct FlowEnd;
  struct Carrier;
  static void carry(Carrier* c);

  void post(uint64_t key, const End& end, bool sending);
  void start_flow(const End& send, const End& receive);
  void carry_later(int gpu, const FlowEnd& end);
  void hand_to_carrier(int gpu);
  void run_woken_carriers();
  double next_network_event();
  void move_simgrid_to(double time);
  void deliver_completed();

  simgrid::s4u::Engine& engine_;
  std::vector<simgrid::s4u::Host*> hosts_;
  double now_ = 0;
  uint64_t next_order_ = 0;
  std::priority_queue<Timer, std::vector<Timer>, Later> timers_;
  std::unordered_map<uint64_t, Posted> posted_;
  std::vector<Flow> flows_;        // by slot; a finished slot is reused
  std::vector<int> free_slots_;
  std::vector<int> completed_;     // slots whose flows ended since the last delivery, in order
  std::vector<std::unique_ptr<Carrier>> carriers_;
  std::vector<std::vector<Carrier*>> idle_carriers_;  // per GPU host
  std::vector<std::vector<FlowEnd>> batch_;            // per GPU: flow ends started now
  std::vector<int> batched_gpus_;                      // GPUs with a batch, in order
  std::vector<simgrid::s4u::Mailbox*> flow_mailboxes_;  // per slot
  int in_flight_ = 0;
  bool network_next_known_ = false;
  double network_next_ = 0;
  size_t timers_rung_ = 0, flows_started_ = 0, network_steps_ = 0;
};

}  // namespace tandem
