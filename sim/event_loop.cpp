#include "sim/event_loop.h"

#include <simgrid/kernel/resource/Model.hpp>
#include <simgrid/s4u.hpp>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"

namespace sg4 = simgrid::s4u;

namespace tandem {

struct EventLoop::Flow {
  End send, receive;
  double began = 0;
};

// One end of a flow: which, and the comm that carries it.
struct EventLoop::FlowEnd {
  bool sending = false;
  int slot = -1;
  uint64_t bytes = 0;
};

// The ends of flows a GPU's host started at one moment, carried together (see the header).
struct EventLoop::Carrier {
  EventLoop* loop = nullptr;
  int gpu = -1;
  sg4::ActorPtr actor;
  bool stop = false;
  std::vector<FlowEnd> ends;
};

namespace {
constexpr double kNever = std::numeric_limits<double>::infinity();
int payload = 0;  // what a flow's comm carries: only its simulated size matters
}  // namespace

// A carrier actor: a plain function, as in SimGrid's examples. It posts its batch of flow ends
// and waits for each; its list of activities holds that batch only.
void EventLoop::carry(Carrier* c) {
  std::vector<sg4::ActivityPtr> comms;
  std::vector<FlowEnd> ends;
  std::vector<int*> received;
  while (!c->stop) {
    ends.swap(c->ends);
    c->ends.clear();
    comms.clear();
    received.assign(ends.size(), nullptr);
    for (size_t i = 0; i < ends.size(); ++i) {
      sg4::Mailbox* mailbox = c->loop->flow_mailboxes_[idx(ends[i].slot)];
      if (ends[i].sending)
        comms.push_back(mailbox->put_async(&payload, ends[i].bytes));
      else
        comms.push_back(mailbox->get_async<int>(&received[i]));
    }
    while (!comms.empty()) {
      const auto i = idx(sg4::Activity::wait_any(comms));
      if (!ends[i].sending) c->loop->completed_.push_back(ends[i].slot);
      comms.erase(comms.begin() + static_cast<ptrdiff_t>(i));
      ends.erase(ends.begin() + static_cast<ptrdiff_t>(i));
      received.erase(received.begin() + static_cast<ptrdiff_t>(i));
    }
    c->loop->idle_carriers_[idx(c->gpu)].push_back(c);
    sg4::this_actor::suspend();  // until the loop gives it the next batch, or stops it
  }
}

uint64_t EventLoop::key(Channel c, int a, int b) {
  if (a < 0 || b < 0) throw std::logic_error("EventLoop::key: negative id");
  return (static_cast<uint64_t>(c) << 62) | (static_cast<uint64_t>(a) << 31) | static_cast<uint64_t>(b);
}

EventLoop::EventLoop(sg4::Engine& engine, std::vector<sg4::Host*> hosts)
    : engine_(engine), hosts_(std::move(hosts)), idle_carriers_(hosts_.size()), batch_(hosts_.size()) {}

EventLoop::~EventLoop() = default;

void EventLoop::at(double time, Listener* who, int task, int tag) {
  timers_.push(Timer{std::max(time, now_), next_order_++, who, task, tag});
}

void EventLoop::send(uint64_t key, int from_gpu, double bytes, Listener* who, int task) {
  post(key, End{from_gpu, who, task, bytes}, true);
}

void EventLoop::receive(uint64_t key, int to_gpu, Listener* who, int task) {
  post(key, End{to_gpu, who, task, 0}, false);
}

// One end of a message: it meets the oldest end of the other kind waiting on its key, or waits.
void EventLoop::post(uint64_t key, const End& end, bool sending) {
  if (auto it = posted_.find(key); it != posted_.end()) {
    auto& others = sending ? it->second.receives : it->second.sends;
    if (!others.empty()) {
      const End other = others.front();
      others.erase(others.begin());
      if (it->second.sends.empty() && it->second.receives.empty()) posted_.erase(it);
      if (sending) start_flow(end, other);
      else start_flow(other, end);
      return;
    }
  }
  Posted& waiting = posted_[key];
  (sending ? waiting.sends : waiting.receives).push_back(end);
}

size_t EventLoop::unmatched() const {
  size_t n = 0;
  for (const auto& [key, p] : posted_) n += p.sends.size() + p.receives.size();
  return n;
}

// SimGrid's engine runs to `time` (handling what happens then: a latency ending, flows
// completing, which its completion signal hands to completed_).
void EventLoop::move_simgrid_to(double time) {
  engine_.run_until(time);
  ++network_steps_;
  network_next_known_ = false;
}

void EventLoop::start_flow(const End& send, const End& receive) {
  // SimGrid's clock lags the loop's between network events; nothing happens on the network
  // before the next of them, so it can be brought to now.
  if (now_ > sg4::Engine::get_clock()) move_simgrid_to(now_);
  int slot;
  if (free_slots_.empty()) {
    slot = static_cast<int>(flows_.size());
    flows_.emplace_back();
    flow_mailboxes_.push_back(sg4::Mailbox::by_name("flow/" + std::to_string(slot)));
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
  }
  Flow& f = flows_[idx(slot)];
  f.send = send;
  f.receive = receive;
  f.began = now_;
  carry_later(send.gpu, FlowEnd{true, slot, static_cast<uint64_t>(std::max(send.bytes, 1.0))});
  carry_later(receive.gpu, FlowEnd{false, slot, 0});
  ++in_flight_;
  ++flows_started_;
}

// Collects the flow ends each GPU starts now; run_woken_carriers hands each GPU's to a carrier.
void EventLoop::carry_later(int gpu, const FlowEnd& end) {
  auto& ends = batch_[idx(gpu)];
  if (ends.empty()) batched_gpus_.push_back(gpu);
  ends.push_back(end);
}

// Gives a GPU's batch to an idle carrier on its host (a new one if none is idle).
void EventLoop::hand_to_carrier(int gpu) {
  auto& idle = idle_carriers_.at(idx(gpu));
  Carrier* c;
  const bool fresh = idle.empty();
  if (fresh) {
    carriers_.push_back(std::make_unique<Carrier>());
    c = carriers_.back().get();
    c->loop = this;
    c->gpu = gpu;
  } else {
    c = idle.back();
    idle.pop_back();
  }
  c->ends.swap(batch_[idx(gpu)]);
  batch_[idx(gpu)].clear();
  if (fresh)
    c->actor = sg4::Actor::create("carrier", hosts_.at(idx(gpu)), [c] { carry(c); });
  else
    c->actor->resume();
}

// Lets the carriers given flows since SimGrid last ran post their comms, at the current time.
void EventLoop::run_woken_carriers() {
  if (batched_gpus_.empty()) return;
  for (int gpu : batched_gpus_) hand_to_carrier(gpu);
  batched_gpus_.clear();
  engine_.run_until(sg4::Engine::get_clock());
  ++network_steps_;
  network_next_known_ = false;
}

// When SimGrid's next network event happens (a latency ends, a flow completes), as its engine
// computes it: the earliest of its models' next events. Never while nothing is in flight.
double EventLoop::next_network_event() {
  if (in_flight_ == 0) return kNever;
  if (!network_next_known_) {
    const double clock = sg4::Engine::get_clock();
    double delta = -1;
    for (auto* model : engine_.get_all_models()) {
      if (!model->next_occurring_event_is_idempotent()) continue;
      const double d = model->next_occurring_event(clock);
      if (d >= 0 && (delta < 0 || d < delta)) delta = d;
    }
    if (delta < 0)
      throw std::runtime_error("the simulation could not finish the step: " + std::to_string(in_flight_) +
                               " flows are in flight and none can progress (a link without bandwidth?)");
    network_next_ = clock + delta;
    network_next_known_ = true;
  }
  return network_next_;
}

void EventLoop::deliver_completed() {
  // Taken out first: a delivery may start flows.
  std::vector<int> done;
  done.swap(completed_);
  now_ = std::max(now_, sg4::Engine::get_clock());
  for (int slot : done) {
    Flow& f = flows_[idx(slot)];
    const End send = f.send, receive = f.receive;
    const double began = f.began;
    free_slots_.push_back(slot);
    --in_flight_;
    if (receive.who != nullptr) receive.who->on_delivered(receive.task, began);
    if (send.who != nullptr) send.who->on_delivered(send.task, began);
  }
}

void EventLoop::run() {
  engine_.run_until(0.0);  // seals the platform
  while (true) {
    run_woken_carriers();
    if (!completed_.empty()) {
      deliver_completed();
      continue;
    }
    const double timer = timers_.empty() ? kNever : timers_.top().at;
    const double network = next_network_event();
    if (timer == kNever && network == kNever) break;
    if (network <= timer) {
      move_simgrid_to(network);
      continue;
    }
    const Timer t = timers_.top();
    timers_.pop();
    now_ = t.at;
    ++timers_rung_;
    t.who->on_timer(t.task, t.tag);
  }
  // Nothing is in flight: every carrier is idle, suspended. Let them end.
  for (const auto& c : carriers_) {
    c->stop = true;
    c->actor->resume();
  }
  engine_.run_until(sg4::Engine::get_clock());
  carriers_.clear();
}

}  // namespace tandem
