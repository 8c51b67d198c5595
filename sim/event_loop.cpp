#include "sim/event_loop.h"

#include <simgrid/kernel/resource/Model.hpp>
#include <simgrid/s4u.hpp>

#include <algorithm>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

namespace sg4 = simgrid::s4u;

namespace tandem {

struct EventLoop::Flow {
  sg4::CommPtr comm;
  End send, receive;
  double began = 0;
};

namespace {
constexpr double kNever = std::numeric_limits<double>::infinity();
// The loop whose flows SimGrid is running: its completion signal is process-wide.
EventLoop* running = nullptr;
}  // namespace

uint64_t EventLoop::key(Channel c, int a, int b) {
  if (a < 0 || b < 0) throw std::logic_error("EventLoop::key: negative id");
  return (static_cast<uint64_t>(c) << 62) | (static_cast<uint64_t>(a) << 31) | static_cast<uint64_t>(b);
}

EventLoop::EventLoop(sg4::Engine& engine, std::vector<sg4::Host*> hosts) : engine_(engine), hosts_(std::move(hosts)) {
  static std::once_flag connected;
  std::call_once(connected, [] {
    sg4::Activity::on_completion_cb([](const sg4::Activity& a) {
      // Only this loop starts activities; the slot travels as the activity's data (plus one,
      // so that no slot reads as null).
      if (running != nullptr) running->on_completion(static_cast<int>(reinterpret_cast<intptr_t>(a.get_data<void>()) - 1));
    });
  });
}

EventLoop::~EventLoop() {
  if (running == this) running = nullptr;
}

void EventLoop::on_completion(int flow) { running->completed_.push_back(flow); }

void EventLoop::at(double time, Listener* who, int task, int tag) {
  timers_.push(Timer{std::max(time, now_), next_order_++, who, task, tag});
}

void EventLoop::send(uint64_t key, int from_gpu, double bytes, Listener* who, int task) {
  const End end{from_gpu, who, task, bytes};
  auto it = posted_.find(key);
  if (it != posted_.end() && !it->second.receives.empty()) {
    const End other = it->second.receives.front();
    it->second.receives.erase(it->second.receives.begin());
    if (it->second.sends.empty() && it->second.receives.empty()) posted_.erase(it);
    start_flow(end, other);
    return;
  }
  posted_[key].sends.push_back(end);
}

void EventLoop::receive(uint64_t key, int to_gpu, Listener* who, int task) {
  const End end{to_gpu, who, task, 0};
  auto it = posted_.find(key);
  if (it != posted_.end() && !it->second.sends.empty()) {
    const End other = it->second.sends.front();
    it->second.sends.erase(it->second.sends.begin());
    if (it->second.sends.empty() && it->second.receives.empty()) posted_.erase(it);
    start_flow(other, end);
    return;
  }
  posted_[key].receives.push_back(end);
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
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
  }
  Flow& f = flows_[static_cast<size_t>(slot)];
  f.send = send;
  f.receive = receive;
  f.began = now_;
  f.comm = sg4::Comm::sendto_async(hosts_.at(static_cast<size_t>(send.gpu)), hosts_.at(static_cast<size_t>(receive.gpu)),
                                   static_cast<uint64_t>(std::max(send.bytes, 1.0)));
  f.comm->set_data(reinterpret_cast<void*>(static_cast<intptr_t>(slot) + 1));
  ++in_flight_;
  ++flows_started_;
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
  // Taken out first: a delivery may start flows, and SimGrid may finish one as it starts.
  std::vector<int> done;
  done.swap(completed_);
  now_ = std::max(now_, sg4::Engine::get_clock());
  for (int slot : done) {
    Flow& f = flows_[static_cast<size_t>(slot)];
    const End send = f.send, receive = f.receive;
    const double began = f.began;
    f.comm = nullptr;  // outside SimGrid's completion signal: the comm may be released now
    free_slots_.push_back(slot);
    --in_flight_;
    if (receive.who != nullptr) receive.who->on_delivered(receive.task, began);
    if (send.who != nullptr) send.who->on_delivered(send.task, began);
  }
}

void EventLoop::run() {
  running = this;
  engine_.run_until(0.0);  // seals the platform
  while (true) {
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
  running = nullptr;
}

}  // namespace tandem
