#include "sim/engine.h"

#include <simgrid/s4u.hpp>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <unistd.h>
#include <cmath>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <map>
#include <limits>
#include <memory>
#include <tuple>
#include <unordered_map>

#include "scenarios/program.h"
#include "scenarios/stage_partition.h"
#include "scenarios/task_work.h"
#include "sim/all_to_all.h"
#include "sim/compute_cost.h"
#include "sim/event_loop.h"
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
// transfers are timers of the EventLoop (GpuRunner::delay); only flows use SimGrid's resources.
constexpr double kHostSpeed = 1e9;

// Everything the GPUs' runners share, read-only once the run starts (and the results they write).
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
  // (rank, EP group's first member, block, bytes per copy); the group is 0 unless the fabric has
  // faults (then groups differ).
  std::map<std::tuple<int, int, int, double>, A2APlan> a2a_plans;
  std::vector<std::vector<const A2APlan*>> a2a_plan_of_task;  // per rank, per task: found once
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
  // to arrive fixes every member's end from the arrival times.
  struct Rendezvous {
    std::vector<double> arrive;  // per member
    std::vector<std::pair<EventLoop::Listener*, size_t>> waiting;  // who has arrived, as which member
  };
  std::unordered_map<uint64_t, Rendezvous> rendezvous;  // by (rank, first member, task)
  // Results.
  std::vector<GpuTime> gpu_time;  // per GPU (those simulated): where its step went
  std::vector<TraceEvent> events;
  double end_time = 0;
  std::function<void(int gpu, double at)> on_gpu_done;  // progress lines

  int gpu(int rank, int replica) const { return rank * dp + replica; }
};

// An all-to-all's analytic plan, once per (rank, block, bytes per copy): EP groups of one rank
// route over disjoint, isomorphic links and share the layer's RoutingPattern, so the first
// group's figures stand for all of them — unless NICs or planes are down or slow, which makes
// groups differ: then once per group.
const A2APlan& analytic_all_to_all(World& w, const A2AGroup& g, int task, int block, double bytes_per_copy) {
  const bool per_group = w.topo->faults().any();
  const A2APlan** found = per_group ? nullptr : &w.a2a_plan_of_task[static_cast<size_t>(g.rank)][static_cast<size_t>(task)];
  if (found != nullptr && *found != nullptr) return **found;
  const auto key = std::make_tuple(g.rank, per_group ? g.first : 0, block, bytes_per_copy);
  auto it = w.a2a_plans.find(key);
  if (it == w.a2a_plans.end())
    it = w.a2a_plans.emplace(key, plan_all_to_all(w.layout, *w.topo, g, w.a2a->ib_efficiency, w.a2a->nvlink_efficiency)).first;
  if (found != nullptr) *found = &it->second;
  return it->second;
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

// One GPU's run of its rank's tasks on two streams: a state machine the EventLoop drives. A task
// starts once its stream is free and its dependencies are done; it ends when its parts — timers
// (kernels, analytic transfers) and messages (flows) — have all ended.
class GpuRunner final : public EventLoop::Listener {
 public:
  GpuRunner(World& w, EventLoop& loop, int gpu)
      : w_(w), loop_(loop), gpu_(gpu), rank_(gpu / w.dp), replica_(gpu % w.dp),
        tasks_(w.program->tasks[static_cast<size_t>(rank_)]), time_(gpu, rank_) {}

  int gpu() const { return gpu_; }
  bool finished() const { return left_ == 0; }
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

  void start() {
    done_.assign(tasks_.size(), 0);
    start_.assign(tasks_.size(), 0);
    outstanding_.assign(tasks_.size(), 0);
    left_ = tasks_.size();
    advance();
  }

  void on_timer(int task, int tag) override {
    if (static_cast<Then>(tag) == Then::start_flows) start_flows(task);
    part_done(task);
  }

  void on_delivered(int task, double began) override {
    if (task < 0) return;  // a send of this GPU's that no task waits for
    // A receive counts from when its transfer started, not from when it was posted: waiting
    // for the producer is pipeline bubble, not communication.
    if (tasks_[static_cast<size_t>(task)].kind == TaskKind::pp_recv) {
      const double posted = start_[static_cast<size_t>(task)];
      start_[static_cast<size_t>(task)] = std::max(posted, began);
      const int peer = tasks_[static_cast<size_t>(task)].peer;
      if (peer >= 0) w_.waited_on_pp[static_cast<size_t>(w_.gpu(peer, replica_))] += std::max(0.0, began - posted);
    }
    part_done(task);
  }

 private:
  // What a timer's end starts next within its task.
  enum class Then {
    nothing,
    start_flows,  // an all-to-all's kernels before its transfers (casts, notify) ended
  };

  void part_done(int task) {
    if (--outstanding_[static_cast<size_t>(task)] != 0) return;
    finish(task);
    advance();
  }

  // Start what can start; a task with nothing to wait for ends at once and may free the next.
  void advance() {
    while (launch(Stream::compute, next_compute_, compute_running_) || launch(Stream::comm, next_comm_, comm_running_)) {
    }
  }

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
    start_[static_cast<size_t>(i)] = loop_.now();
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

  // A task's part that only takes time (a kernel, an analytic transfer).
  void delay(double seconds, int task, Then then = Then::nothing) {
    ++outstanding_[static_cast<size_t>(task)];
    loop_.at(loop_.now() + std::max(seconds, 0.0), this, task, static_cast<int>(then));
  }
  // A task's part that is a message, either end.
  void send(uint64_t key, double bytes, int task) {
    ++outstanding_[static_cast<size_t>(task)];
    loop_.send(key, gpu_, bytes, this, task);
  }
  void receive(uint64_t key, int task) {
    ++outstanding_[static_cast<size_t>(task)];
    loop_.receive(key, gpu_, this, task);
  }

  // grouped tier: the EP group's members meet at each all-to-all; when the last one arrives,
  // everyone's end time follows from the arrival times and the analytic plan, and each member's
  // task ends then. A member is ready to transfer once its own kernels before the transfer
  // (`prefix`) are done.
  void meet(const A2AGroup& g, int task, const A2APlan& plan, double prefix, double scale) {
    const uint64_t key = (static_cast<uint64_t>(rank_) << 48) | (static_cast<uint64_t>(g.first) << 24) | static_cast<uint64_t>(task);
    auto& rv = w_.rendezvous[key];
    if (rv.arrive.empty()) rv.arrive.assign(static_cast<size_t>(g.ep), 0.0);
    const auto member = static_cast<size_t>(replica_ % w_.ep);
    rv.arrive[member] = loop_.now() + prefix;
    ++outstanding_[static_cast<size_t>(task)];
    rv.waiting.push_back({this, member});
    if (static_cast<int>(rv.waiting.size()) < g.ep) return;
    const std::vector<double> end = plan.ends(rv.arrive, scale);
    // Who the group waited for: the member that arrived last, charged every other member's wait.
    const auto last = static_cast<size_t>(std::max_element(rv.arrive.begin(), rv.arrive.end()) - rv.arrive.begin());
    double waited = 0;
    for (double a : rv.arrive) waited += rv.arrive[last] - a;
    w_.waited_on_a2a[static_cast<size_t>(g.gpu(w_.layout, static_cast<int>(last)))] += waited;
    for (const auto& [who, m] : rv.waiting) loop_.at(end[m], who, task);
    w_.rendezvous.erase(key);
  }

  void start_comm(int i) {
    const Task& t = tasks_[static_cast<size_t>(i)];
    const TaskWork& work = w_.work[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
    switch (t.kind) {
      case TaskKind::pp_send:
        // Posted, not waited for: pipeline transfers are DMA-driven and the sender's stream
        // goes on (as DualPipe batches its isend/irecv); the receiver waits for the data. A send
        // that held the stream until its receive is posted could deadlock two neighbours whose
        // transfers cross.
        loop_.send(EventLoop::key(EventLoop::Channel::pipeline, replica_, t.message), gpu_, work.bytes, this, -1);
        break;
      case TaskKind::pp_recv:
        receive(EventLoop::key(EventLoop::Channel::pipeline, replica_, t.message), i);
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
          const double transfer = analytic_all_to_all(w_, group, i, t.block, work.bytes_per_copy).seconds[static_cast<size_t>(replica_ % w_.ep)];
          delay(prefix + transfer * scale, i);
          break;
        }
        if (w_.options->fidelity == Fidelity::grouped) {
          meet(group, i, analytic_all_to_all(w_, group, i, t.block, work.bytes_per_copy), prefix, scale);
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
        send(EventLoop::key(EventLoop::Channel::ring, gpu_, next), work.bytes * (n - 1) / n, i);
        receive(EventLoop::key(EventLoop::Channel::ring, prev, gpu_), i);
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
      const uint64_t key = EventLoop::key(EventLoop::Channel::all_to_all, fl.from, fl.to);
      if (fl.from == gpu_) send(key, bytes, i);
      if (fl.to == gpu_) receive(key, i);
    }
  }

  void finish(int i) {
    const Task& t = tasks_[static_cast<size_t>(i)];
    const double now = loop_.now();
    const double begin = start_[static_cast<size_t>(i)];
    done_[static_cast<size_t>(i)] = 1;
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
    if (--left_ == 0) {  // this GPU's step is done (its last sends may be delivered later)
      time_.seal();
      w_.gpu_time[static_cast<size_t>(gpu_)] = std::move(time_);
      w_.end_time = std::max(w_.end_time, now);
      if (w_.on_gpu_done) w_.on_gpu_done(gpu_, now);
    }
  }

  World& w_;
  EventLoop& loop_;
  int gpu_, rank_, replica_;
  const std::vector<Task>& tasks_;
  std::vector<char> done_;
  std::vector<double> start_;
  std::vector<int> outstanding_;  // per task: its parts not yet ended
  size_t left_ = 1;               // tasks not yet done (1 until start())
  size_t next_compute_ = 0, next_comm_ = 0;
  int compute_running_ = -1, comm_running_ = -1;
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

    // Skewed and measured routing load the members of an EP group unevenly.
    const bool skewed = s.routing.model != RoutingModel::balanced;
    if (skewed && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        std::string("the replicated tier assumes balanced routing (identical replicas); ") +
                            to_string(s.routing.model) + " routing needs grouped, aggregated or per_pair");
    if (s.routing.noise > 0 && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes identical replicas; routing.noise (per micro-batch variation) needs grouped, aggregated or per_pair");
    if (s.faults.any() && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes identical replicas; faults (slow GPUs, NICs or planes) need grouped, aggregated or per_pair");
    World world;
    world.program = &prog;
    world.workload = &w;
    world.skewed = skewed;
    world.noise = s.routing.noise;
    world.seed = s.routing.seed;
    if (s.faults.slow_kernels()) world.gpu_speed = s.faults.gpu_speed(s.gpus);
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
      world.a2a_plan_of_task.emplace_back(works.size(), nullptr);
      world.work.push_back(std::move(works));
      world.compute_seconds.push_back(std::move(seconds));
      world.routed_seconds.push_back(std::move(routed));
      world.transfer_scale.push_back(std::move(scale));
    }

    // The cluster: only the nodes the scenario uses.
    ClusterCard card = s.cluster;
    card.nodes = std::max<int64_t>(1, (s.gpus + card.gpus_per_node - 1) / card.gpus_per_node);
    const Topology topo(card, s.faults.network);
    int argc = 1;
    char arg0[] = "tandem";
    char* argv[] = {arg0, nullptr};
    sg4::Engine engine(&argc, argv);
    world.topo = &topo;
    SimgridPlatform platform(engine, topo, kHostSpeed, SimgridPlatformOptions{});
    // The event loop's carrier actors (sim/event_loop.h) only post a comm and wait: small stacks
    // (SimGrid's default is 8 MiB of address space each, and there is a carrier per flow end
    // in flight at once — tens of thousands in the per-pair tier at 512 GPUs).
    sg4::Engine::set_config("contexts/stack-size:256");
    const int gpus = static_cast<int>(s.gpus);
    world.gpu_time.resize(static_cast<size_t>(gpus));
    // The GPUs simulated: all of them, or replica 0 of every pipeline rank.
    std::vector<int> simulated;
    for (int g = 0; g < gpus; ++g)
      if (o.fidelity != Fidelity::replicated || g % world.dp == 0) simulated.push_back(g);
    say("platform: " + std::to_string(topo.num_gpus()) + " GPU hosts, " + std::to_string(topo.num_physical_links()) +
        " links; simulating " + std::to_string(simulated.size()) + " GPUs (" + to_string(o.fidelity) + " tier)");
    EventLoop loop(engine, platform.hosts());
    std::vector<std::unique_ptr<GpuRunner>> runners;
    for (int g : simulated) runners.push_back(std::make_unique<GpuRunner>(world, loop, g));
    if (o.progress)
      world.on_gpu_done = [&](int g, double at) { say("gpu" + std::to_string(g) + " finished its step at simulated " + std::to_string(at) + " s"); };
    // Ctrl-C or SIGTERM: one line and 128 + signal.
    std::signal(SIGINT, interrupted);
    std::signal(SIGTERM, interrupted);
    for (const auto& runner : runners) runner->start();
    loop.run();
    say("done: " + std::to_string(loop.timers_rung()) + " timers, " + std::to_string(loop.flows_started()) + " flows, " +
        std::to_string(loop.network_steps()) + " network steps");
    for (const auto& runner : runners)
      if (!runner->finished())
        throw std::runtime_error("the simulation could not finish the step: " + runner->stuck_at() +
                                 " at simulated time " + std::to_string(loop.now()) + " s");
    if (loop.unmatched() > 0)
      throw std::runtime_error("the simulation could not finish the step: " + std::to_string(loop.unmatched()) +
                               " messages were never matched by their other end");

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
