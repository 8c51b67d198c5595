#include "sim/engine.h"

#include <simgrid/s4u.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <map>
#include <limits>
#include <memory>
#include <tuple>

#include "scenarios/program.h"
#include "scenarios/stage_partition.h"
#include "scenarios/task_work.h"
#include "sim/all_to_all.h"
#include "sim/compute_cost.h"
#include "scenarios/task_cost.h"
#include "topologies/simgrid_platform.h"
#include "topologies/topology.h"

namespace sg4 = simgrid::s4u;

namespace tandem {

const char* to_string(Fidelity f) {
  switch (f) {
    case Fidelity::per_pair: return "per_pair";
    case Fidelity::aggregated: return "aggregated";
    case Fidelity::replicated: return "replicated";
    case Fidelity::grouped: return "grouped";
  }
  return "?";
}

namespace {

extern "C" void interrupted(int sig) {
  static const char line[] = "tandem: interrupted: the simulation was stopped\n";
  (void)!write(STDERR_FILENO, line, sizeof line - 1);
  _exit(128 + sig);
}

// A GPU host's "flop/s" in the platform. Nothing executes on it: a GPU's kernels and analytic
// transfers are timers of its actor (GpuRunner::delay); only flows use SimGrid's resources.
constexpr double kHostSpeed = 1e9;

// Everything the GPU actors share, read-only once the run starts (and the results they write).
struct World {
  const Program* program = nullptr;
  const SimOptions* options = nullptr;
  std::vector<sg4::Host*> hosts;
  int dp = 1, ep = 1, gpn = 8;
  const AllToAllCalibration* a2a = nullptr;
  EpLayout layout;
  // Per rank, per task: what it does (identical for every replica of the rank).
  std::vector<std::vector<TaskWork>> work;
  // Compute tasks: seconds on the SMs the GEMMs are given; comm tasks: seconds of the kernels
  // they run on their own stream before the transfer (casts, DeepEP's notify/layout).
  std::vector<std::vector<double>> compute_seconds;
  const Topology* topo = nullptr;
  std::map<std::tuple<int, int, double>, A2APlan> a2a_plans;  // (rank, block, bytes per copy)
  const Workload* workload = nullptr;
  bool skewed = false;  // routing differs per member: per-member expert loads
  double noise = 0;     // routing.noise: per micro-batch variation of every GPU's routed rows
  uint64_t seed = 1;    // routing.seed
  std::vector<std::vector<double>> routed_seconds;  // the part of compute_seconds that scales with routed rows
  std::vector<std::vector<double>> transfer_scale;  // all-to-all tasks: the stretch of their transfers
  std::vector<double> gpu_speed;  // per GPU, its kernels' speed (faults); empty: all nominal
  // Per GPU: seconds other GPUs spent waiting for it — EP-group members at all-to-alls it arrived
  // at last, the next pipeline rank at receives of its sends.
  std::vector<double> waited_on_a2a, waited_on_pp;
  double speed(int gpu) const { return gpu_speed.empty() ? 1.0 : gpu_speed[static_cast<size_t>(gpu)]; }
  // grouped tier: each all-to-all instance (rank, EP group, task) meets here; the last member
  // to arrive fixes the end time and tells the others through their "a2a-done/<gpu>" mailbox.
  struct Rendezvous {
    int arrived = 0, left = 0;
    std::vector<double> arrive, end;  // per member
    std::vector<int> waiting;
  };
  std::map<std::tuple<int, int, int>, Rendezvous> rendezvous;
  // Results.
  std::vector<GpuTime> gpu_time;  // per GPU (those simulated): where its step went
  std::vector<TraceEvent> events;
  double end_time = 0;

  int gpu(int rank, int replica) const { return rank * dp + replica; }
};

// An all-to-all's analytic plan, once per (rank, block, bytes per copy): EP groups of one rank
// route over disjoint, isomorphic links and share the layer's RoutingPattern, so the first
// group's figures stand for all of them.
const A2APlan& analytic_all_to_all(World& w, const A2AGroup& g, int block, double bytes_per_copy) {
  const auto key = std::make_tuple(g.rank, block, bytes_per_copy);
  auto it = w.a2a_plans.find(key);
  if (it != w.a2a_plans.end()) return it->second;
  return w.a2a_plans.emplace(key, plan_all_to_all(w.layout, *w.topo, g, w.a2a->ib_efficiency, w.a2a->nvlink_efficiency))
      .first->second;
}

// The replicated tier's ring collective, pipelined: (n-1)/n of the bytes over the slowest hop of
// the ring plus one latency (the full tiers send the same bytes as one flow per hop).
// The ring's throughput is its slowest hop's: look at the hops of the first two nodes' worth of
// replicas, which include a hop that leaves the node when the ring spans several.
double analytic_ring(const World& w, int rank, double bytes) {
  const int n = w.dp;
  if (n <= 1 || bytes <= 0) return 0;
  double bandwidth = std::numeric_limits<double>::infinity(), latency = 0;
  for (int i = 0; i < std::min(n, 2 * w.gpn); ++i) {
    const Route r = w.topo->route(w.gpu(rank, i), w.gpu(rank, (i + 1) % n));
    bandwidth = std::min(bandwidth, r.bottleneck_bandwidth);
    latency = std::max(latency, r.latency);
  }
  // Pipelined, as the full tiers' single flow to the next replica: one latency, not n - 1.
  return bytes * (n - 1) / n / bandwidth + latency;
}

std::string pair_mailbox(const char* channel, int from, int to) {
  return std::string(channel) + "/" + std::to_string(from) + ">" + std::to_string(to);
}

// One GPU's run of its rank's tasks on two streams.
class GpuRunner {
 public:
  GpuRunner(World& w, int gpu) : w_(w), gpu_(gpu), rank_(gpu / w.dp), replica_(gpu % w.dp),
        tasks_(w.program->tasks[static_cast<size_t>(rank_)]), time_(gpu, rank_) {}

  bool finished() const { return finished_; }
  // Where this GPU stopped, for the error when a run cannot finish.
  std::string stuck_at() const {
    std::string out = "gpu " + std::to_string(gpu_) + " (rank " + std::to_string(rank_) + ")";
    for (size_t i = 0; i < tasks_.size(); ++i)
      if (i < done_.size() && !done_[i]) {
        out += " waits at task " + std::to_string(i) + " (" + to_string(tasks_[i].kind) + ", " +
               to_string(tasks_[i].stream) + " stream)";
        break;
      }
    return out;
  }

  void operator()() {
    done_.assign(tasks_.size(), 0);
    start_.assign(tasks_.size(), 0);
    outstanding_.assign(tasks_.size(), 0);
    while (true) {
      // Start what can start; a task with nothing to wait for ends at once and may free the next.
      while (launch(Stream::compute, next_compute_, compute_running_) ||
             launch(Stream::comm, next_comm_, comm_running_)) {
      }
      if (pending_.empty() && timers_.empty()) break;
      // The earliest timer (the first set, among equals), and the activities: whichever ends first.
      size_t t = 0;
      for (size_t k = 1; k < timers_.size(); ++k)
        if (timers_[k].at < timers_[t].at) t = k;
      ssize_t i = -1;
      if (pending_.empty()) {
        // A wait below SimGrid's time precision (1 ns) is no wait: the timer is due now.
        if (timers_[t].at - sg4::Engine::get_clock() > 1e-9) sg4::this_actor::sleep_until(timers_[t].at);
      } else {
        acts_.clear();  // kept between waits: no allocation per event
        for (const auto& p : pending_) acts_.push_back(p.activity);
        i = sg4::Activity::wait_any_for(acts_, timers_.empty() ? -1.0 : std::max(0.0, timers_[t].at - sg4::Engine::get_clock()));
      }
      int task = -1;
      Then then = Then::nothing;
      if (i >= 0 && static_cast<size_t>(i) < pending_.size()) {
        task = pending_[static_cast<size_t>(i)].task;
        // A receive counts from when its transfer started, not from when it was posted: waiting
        // for the producer is pipeline bubble, not communication.
        if (task >= 0 && tasks_[static_cast<size_t>(task)].kind == TaskKind::pp_recv) {
          const double posted = start_[static_cast<size_t>(task)];
          const double began = std::max(posted, pending_[static_cast<size_t>(i)].activity->get_start_time());
          start_[static_cast<size_t>(task)] = began;
          const int peer = tasks_[static_cast<size_t>(task)].peer;
          if (peer >= 0) w_.waited_on_pp[static_cast<size_t>(w_.gpu(peer, replica_))] += began - posted;
        }
        then = pending_[static_cast<size_t>(i)].then;
        pending_.erase(pending_.begin() + i);
      } else {  // the timer rang
        task = timers_[t].task;
        then = timers_[t].then;
        timers_.erase(timers_.begin() + static_cast<ptrdiff_t>(t));
      }
      if (task < 0) continue;  // a send of this GPU's that no task waits for was delivered
      if (then == Then::after_meeting) after_meeting(task);
      if (then == Then::start_flows) start_flows(task);
      if (--outstanding_[static_cast<size_t>(task)] == 0) finish(task);
    }
    finished_ = std::all_of(done_.begin(), done_.end(), [](char d) { return d != 0; });
    if (!finished_) return;  // reported by simulate(): the step cannot proceed on this GPU
    time_.seal();
    w_.gpu_time[static_cast<size_t>(gpu_)] = std::move(time_);
    w_.end_time = std::max(w_.end_time, last_finish_);
  }

 private:
  // What finishing an activity starts next within its task.
  enum class Then {
    nothing,
    after_meeting,  // the grouped tier's wait for the last member of the EP group ended
    start_flows,    // an all-to-all's kernels before its transfers (casts, notify) ended
  };
  struct Pending {
    sg4::ActivityPtr activity;
    int task;
    Then then = Then::nothing;
  };

  bool ready(const Task& t) const {
    for (int d : t.deps)
      if (!done_[static_cast<size_t>(d)]) return false;
    return true;
  }

  // Starts the stream's next task if the stream is free and the task's dependencies are done.
  bool launch(Stream stream, size_t& next, int& running) {
    if (running >= 0) return false;
    while (next < tasks_.size() && tasks_[next].stream != stream) ++next;
    if (next >= tasks_.size() || !ready(tasks_[next])) return false;
    const int i = static_cast<int>(next++);
    running = i;
    start_[static_cast<size_t>(i)] = sg4::Engine::get_clock();
    if (stream == Stream::compute) {
      const auto r = static_cast<size_t>(rank_), ti = static_cast<size_t>(i);
      double secs = w_.compute_seconds[r][ti];
      if ((w_.skewed || w_.noise > 0) && tasks_[ti].block >= 0 && w_.routed_seconds[r][ti] != 0) {
        // This GPU's experts get load_factor times the balanced rows of the layer (skewed), and
        // this micro-batch's draw on top (noise).
        const Block& b = w_.workload->blocks[static_cast<size_t>(tasks_[ti].block)];
        double factor = w_.skewed && !b.routing.rows_per_token.empty() ? b.routing.load_factor(replica_ % w_.ep) : 1.0;
        if (w_.noise > 0) factor *= micro_batch_noise(b.layer, tasks_[ti].chunk.micro_batch);
        secs += (factor - 1.0) * w_.routed_seconds[r][ti];
      }
      delay(secs / w_.speed(gpu_), i);
    } else {
      start_comm(i);
    }
    if (outstanding_[static_cast<size_t>(i)] == 0) finish(i);
    return true;
  }

  // 1 + noise z, z ~ N(0, 1) from (seed, layer, micro-batch, GPU): a hash, not a stream, so the
  // draw does not depend on the order tasks run in. Kept above 5% of the share.
  double micro_batch_noise(int64_t layer, int micro_batch) const {
    auto mix = [](uint64_t x) {  // splitmix64's finaliser
      x += 0x9E3779B97F4A7C15ULL;
      x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
      x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
      return x ^ (x >> 31);
    };
    const uint64_t h = mix(mix(mix(w_.seed ^ 0x6E6F697365ULL) ^ static_cast<uint64_t>(layer)) ^ static_cast<uint64_t>(micro_batch)) ^
                       static_cast<uint64_t>(gpu_);
    const uint64_t a = mix(h), b = mix(a);
    const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53, u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    return std::max(0.05, 1.0 + w_.noise * z);
  }

  // A task's part that only takes time (a kernel, an analytic transfer): a timer of this actor's,
  // not a SimGrid activity — no resource is shared, and most of a step's tasks are these.
  void delay(double seconds, int task, Then then = Then::nothing) {
    timers_.push_back({sg4::Engine::get_clock() + std::max(seconds, 0.0), task, then});
    ++outstanding_[static_cast<size_t>(task)];
  }

  // A send no task of this GPU waits for (pipeline sends, a rendezvous's word): watched until
  // delivered rather than detached, as SimGrid 3.32 scans every detached comm each time one ends.
  void post(sg4::ActivityPtr a) { pending_.push_back({std::move(a), -1}); }

  void add(sg4::ActivityPtr a, int task) {
    pending_.push_back({std::move(a), task});
    ++outstanding_[static_cast<size_t>(task)];
  }

  void put(const std::string& mailbox, double bytes, int task) {
    add(sg4::Mailbox::by_name(mailbox)->put_async(&token_, static_cast<uint64_t>(std::max(bytes, 1.0))), task);
  }
  void get(const std::string& mailbox, int task) {
    payloads_.emplace_back(nullptr);
    add(sg4::Mailbox::by_name(mailbox)->get_async<void>(&payloads_.back()), task);
  }

  // grouped tier: the EP group's members meet at each all-to-all; when the last one arrives,
  // everyone's end time follows from the arrival times and the analytic plan. Members that
  // arrived earlier wait for the last one's word (a 1-byte message), then for the rest.
  // A member is ready to transfer once its own kernels before the transfer (`prefix`) are done.
  void meet(const A2AGroup& g, int task, const A2APlan& plan, double prefix, double scale) {
    auto& rv = w_.rendezvous[std::make_tuple(rank_, g.first, task)];
    if (rv.arrive.empty()) rv.arrive.assign(static_cast<size_t>(g.ep), 0.0);
    rv.arrive[static_cast<size_t>(replica_ % w_.ep)] = sg4::Engine::get_clock() + prefix;
    if (++rv.arrived < g.ep) {
      rv.waiting.push_back(gpu_);
      payloads_.emplace_back(nullptr);
      add(done_mailbox(gpu_)->get_async<void>(&payloads_.back()), task);
      pending_.back().then = Then::after_meeting;
      return;
    }
    rv.end = plan.ends(rv.arrive, scale);
    // Who the group waited for: the member that arrived last, charged every other member's wait.
    const auto last = static_cast<size_t>(std::max_element(rv.arrive.begin(), rv.arrive.end()) - rv.arrive.begin());
    double waited = 0;
    for (double a : rv.arrive) waited += rv.arrive[last] - a;
    w_.waited_on_a2a[static_cast<size_t>(g.gpu(w_.layout, static_cast<int>(last)))] += waited;
    rv.left = static_cast<int>(rv.waiting.size());
    for (int other : rv.waiting) post(done_mailbox(other)->put_async(&token_, 1));
    const double rest = rv.end[static_cast<size_t>(replica_ % w_.ep)] - sg4::Engine::get_clock();
    if (rv.left == 0) w_.rendezvous.erase(std::make_tuple(rank_, g.first, task));
    delay(rest, task);
  }
  // The rest of a rendezvous: until this member's end.
  void after_meeting(int task) {
    const int first = replica_ - replica_ % w_.ep;
    const auto key = std::make_tuple(rank_, first, task);
    auto& rv = w_.rendezvous.at(key);
    const double rest = rv.end[static_cast<size_t>(replica_ % w_.ep)] - sg4::Engine::get_clock();
    if (--rv.left == 0) w_.rendezvous.erase(key);
    delay(rest, task);
  }
  static sg4::Mailbox* done_mailbox(int gpu) { return sg4::Mailbox::by_name("a2a-done/" + std::to_string(gpu)); }

  void start_comm(int i) {
    const Task& t = tasks_[static_cast<size_t>(i)];
    const TaskWork& work = w_.work[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
    switch (t.kind) {
      case TaskKind::pp_send:
        // Posted, not waited for: pipeline transfers are DMA-driven and the sender's stream
        // goes on (as DualPipe batches its isend/irecv); the receiver waits for the data. A send
        // that held the stream until its receive is posted could deadlock two neighbours whose
        // transfers cross.
        post(sg4::Mailbox::by_name("pp/" + std::to_string(replica_) + "/" + std::to_string(t.message))
                 ->put_async(&token_, static_cast<uint64_t>(std::max(work.bytes, 1.0))));
        break;
      case TaskKind::pp_recv:
        get("pp/" + std::to_string(replica_) + "/" + std::to_string(t.message), i);
        break;
      case TaskKind::dispatch_f:
      case TaskKind::dispatch_b:
      case TaskKind::combine_f:
      case TaskKind::combine_b: {
        if (w_.ep <= 1) break;
        const A2AGroup group(w_.layout, gpu_, work.tokens, work.bytes_per_copy, w_.workload->blocks[static_cast<size_t>(t.block)].routing);
        const auto r = static_cast<size_t>(rank_), ti = static_cast<size_t>(i);
        const double prefix = w_.compute_seconds[r][ti] / w_.speed(gpu_), scale = w_.transfer_scale[r][ti];
        if (w_.options->fidelity == Fidelity::replicated) {
          const double transfer = analytic_all_to_all(w_, group, t.block, work.bytes_per_copy).seconds[static_cast<size_t>(replica_ % w_.ep)];
          delay(prefix + transfer * scale, i);
          break;
        }
        if (w_.options->fidelity == Fidelity::grouped) {
          meet(group, i, analytic_all_to_all(w_, group, t.block, work.bytes_per_copy), prefix, scale);
          break;
        }
        if (prefix > 0) {
          delay(prefix, i, Then::start_flows);
        } else {
          start_flows(i);
        }
        break;
      }
      case TaskKind::dp_reduce_scatter:
      case TaskKind::dp_all_gather: {
        // Ring over the data-parallel replicas of this rank: (n-1)/n of the data to the next one.
        const int n = w_.dp;
        if (n <= 1) break;
        if (w_.options->fidelity == Fidelity::replicated) {
          delay(analytic_ring(w_, rank_, work.bytes), i);
          break;
        }
        const int next = w_.gpu(rank_, (replica_ + 1) % n), prev = w_.gpu(rank_, (replica_ + n - 1) % n);
        put(pair_mailbox("dp", gpu_, next), work.bytes * (n - 1) / n, i);
        get(pair_mailbox("dp", prev, gpu_), i);
        break;
      }
      default: break;
    }
  }

  // per_pair and aggregated tiers: this GPU sends its flows of an all-to-all task (IB legs, and
  // NVLink legs it forwards as an arrival GPU) and receives every flow addressed to it; the task
  // ends when all have completed. A flow carries its bytes over the efficiency of its leg and the
  // task's stretch, so the links' nominal rates give the measured transfer times.
  void start_flows(int i) {
    const Task& t = tasks_[static_cast<size_t>(i)];
    const TaskWork& work = w_.work[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
    const A2AGroup group(w_.layout, gpu_, work.tokens, work.bytes_per_copy, w_.workload->blocks[static_cast<size_t>(t.block)].routing);
    const double scale = w_.transfer_scale[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
    for (const A2AFlow& fl : flows_touching(w_.layout, group, gpu_, w_.options->fidelity == Fidelity::per_pair)) {
      const bool nvlink = fl.from / w_.gpn == fl.to / w_.gpn;
      const double bytes = fl.bytes * scale / (nvlink ? w_.a2a->nvlink_efficiency : w_.a2a->ib_efficiency);
      if (fl.from == gpu_) put(pair_mailbox("a2a", fl.from, fl.to), bytes, i);
      if (fl.to == gpu_) get(pair_mailbox("a2a", fl.from, fl.to), i);
    }
  }

  void finish(int i) {
    const Task& t = tasks_[static_cast<size_t>(i)];
    const double now = sg4::Engine::get_clock();
    const double begin = start_[static_cast<size_t>(i)];
    done_[static_cast<size_t>(i)] = 1;
    last_finish_ = now;
    if (t.stream == Stream::compute) compute_running_ = -1;
    else comm_running_ = -1;
    time_.add(t.stream == Stream::compute, to_string(t.kind), slot_class(*w_.program, rank_, t.slot), begin, now);
    const bool traced = w_.options->trace && (w_.options->trace_gpus > 0 ? gpu_ < w_.options->trace_gpus : replica_ == 0);
    if (traced) {
      const TaskWork& work = w_.work[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
      w_.events.push_back(TraceEvent{gpu_, rank_, to_string(t.stream), to_string(t.kind), t.block,
                                     t.chunk.micro_batch, t.chunk.stage, begin, now,
                                     work.trace_flops(), work.trace_bytes(t.stream), t.slot});
    }
  }

  World& w_;
  int gpu_, rank_, replica_;
  const std::vector<Task>& tasks_;
  std::vector<char> done_;
  std::vector<double> start_;
  std::vector<Pending> pending_;
  std::vector<sg4::ActivityPtr> acts_;  // pending_'s activities, for wait_any
  struct Timer {
    double at;
    int task;
    Then then;
  };
  std::vector<Timer> timers_;
  std::vector<int> outstanding_;  // per task: its activities not yet finished
  std::deque<void*> payloads_;
  int token_ = 0;
  size_t next_compute_ = 0, next_comm_ = 0;
  int compute_running_ = -1, comm_running_ = -1;
  bool finished_ = false;
  double last_finish_ = 0;  // when this GPU's last task ended (its sends may be delivered later)
  GpuTime time_;  // where this GPU's step goes, task by task
};

}  // namespace

Result<SimResult> simulate(const Scenario& s, const SimOptions& o) {
  return catch_input_errors([&]() -> SimResult {
    const auto wall0 = std::chrono::steady_clock::now();
    std::vector<std::string> files = s.calibration;
    files.insert(files.end(), o.calibration.begin(), o.calibration.end());
    const Calibration calibration = resolve_calibration(files);
    const ComputeCostModel costs(s.cluster.gpu, calibration);
    const Workload w = scenario_workload(s);
    const StagePartition part = o.partition ? *o.partition : scenario_partition(s, w);
    const Program prog = scenario_program(s, w, part);
    const Schedule& sch = prog.schedule;
    auto say = [&](const std::string& what) {
      if (!o.progress) return;
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
      std::fprintf(stderr, "[%7.2f s] %s\n", t, what.c_str());
    };
    size_t ntasks = 0;
    for (const auto& tasks : prog.tasks) ntasks += tasks.size();
    say("program: " + std::to_string(sch.ranks) + " pipeline ranks, " + std::to_string(ntasks) + " tasks (" +
        to_string(s.schedule.kind) + ", " + std::to_string(sch.micro_batches) + " micro-batches)");

    const bool skewed = s.routing.model == RoutingModel::skewed;
    if (skewed && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes balanced routing (identical replicas); skewed routing needs grouped, aggregated or per_pair");
    if (s.routing.noise > 0 && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes identical replicas; routing.noise (per micro-batch variation) needs grouped, aggregated or per_pair");
    if (s.faults.any() && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes identical replicas; slow GPUs (faults) need grouped, aggregated or per_pair");
    World world;
    world.program = &prog;
    world.workload = &w;
    world.skewed = skewed;
    world.noise = s.routing.noise;
    world.seed = s.routing.seed;
    if (s.faults.any()) world.gpu_speed = s.faults.gpu_speed(s.gpus);
    world.waited_on_a2a.assign(static_cast<size_t>(s.gpus), 0.0);
    world.waited_on_pp.assign(static_cast<size_t>(s.gpus), 0.0);
    world.options = &o;
    world.dp = static_cast<int>(s.plan.dp);
    world.ep = static_cast<int>(s.plan.ep);
    world.gpn = static_cast<int>(s.cluster.gpus_per_node);
    world.a2a = &costs.calibration().all_to_all;
    world.layout = EpLayout{world.dp, world.ep, world.gpn};
    for (int r = 0; r < sch.ranks; ++r) {
      std::vector<TaskWork> works;
      std::vector<double> seconds, routed, scale;
      for (const Task& t : prog.tasks[static_cast<size_t>(r)]) {
        works.push_back(task_work(s, w, prog, r, t));
        const TaskCost c = task_cost(s, prog, r, t, works.back(), costs);
        seconds.push_back(c.seconds);
        routed.push_back(c.routed_seconds);
        scale.push_back(c.transfer_scale);
      }
      world.work.push_back(std::move(works));
      world.compute_seconds.push_back(std::move(seconds));
      world.routed_seconds.push_back(std::move(routed));
      world.transfer_scale.push_back(std::move(scale));
    }

    // The cluster: only the nodes the scenario uses.
    ClusterCard card = s.cluster;
    card.nodes = std::max<int64_t>(1, (s.gpus + card.gpus_per_node - 1) / card.gpus_per_node);
    const Topology topo(card);
    int argc = 1;
    char arg0[] = "tandem";
    char* argv[] = {arg0, nullptr};
    sg4::Engine engine(&argc, argv);
    world.topo = &topo;
    SimgridPlatformOptions popt;
    popt.host_cores = 2;  // one per stream (unused now that the streams keep time with timers)
    SimgridPlatform platform(engine, topo, kHostSpeed, popt);
    const int gpus = static_cast<int>(s.gpus);
    world.gpu_time.resize(static_cast<size_t>(gpus));
    // The GPUs simulated: all of them, or replica 0 of every pipeline rank.
    std::vector<int> simulated;
    for (int g = 0; g < gpus; ++g)
      if (o.fidelity != Fidelity::replicated || g % world.dp == 0) simulated.push_back(g);
    say("platform: " + std::to_string(topo.num_gpus()) + " GPU hosts, " + std::to_string(topo.num_physical_links()) +
        " links; simulating " + std::to_string(simulated.size()) + " GPUs (" + to_string(o.fidelity) + " tier)");
    std::vector<std::unique_ptr<GpuRunner>> runners;
    for (int g : simulated) {
      runners.push_back(std::make_unique<GpuRunner>(world, g));
      GpuRunner* runner = runners.back().get();
      sg4::Actor::create("gpu" + std::to_string(g), platform.host(g), [runner] { (*runner)(); });
    }
    if (o.progress)
      sg4::Actor::on_termination_cb([&](const sg4::Actor& a) {
        say(a.get_name() + " finished its step at simulated " + std::to_string(sg4::Engine::get_clock()) + " s");
      });
    // Ctrl-C or SIGTERM: one line and 128 + signal (SimGrid's own handler lists every actor).
    std::signal(SIGINT, interrupted);
    std::signal(SIGTERM, interrupted);
    engine.run();
    say("done");
    for (const auto& runner : runners)
      if (!runner->finished())
        throw std::runtime_error("the simulation could not finish the step: " + runner->stuck_at() +
                                 " at simulated time " + std::to_string(sg4::Engine::get_clock()) + " s");

    SimResult r;
    r.step_time_s = world.end_time;
    r.gpus_simulated = static_cast<int>(simulated.size());
    for (int g : simulated) r.gpu_times.push_back(std::move(world.gpu_time[static_cast<size_t>(g)]));
    if (o.fidelity != Fidelity::replicated) {  // every GPU simulated: who waited on whom
      r.waited_on_a2a_s = std::move(world.waited_on_a2a);
      r.waited_on_pp_s = std::move(world.waited_on_pp);
    }
    r.trace.engine = "sim";
    r.trace.program = program_digest(prog);
    r.trace.scenario = s.name;
    r.trace.events = std::move(world.events);
    std::sort(r.trace.events.begin(), r.trace.events.end(),
              [](const TraceEvent& a, const TraceEvent& b) { return std::tie(a.gpu, a.start) < std::tie(b.gpu, b.start); });
    r.sim_wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return r;
  });
}

}  // namespace tandem
