#include "sim/engine.h"

#include <simgrid/s4u.hpp>

#include <algorithm>
#include <chrono>
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
#include "sim/compute_cost.h"
#include "topologies/simgrid_platform.h"
#include "topologies/topology.h"

namespace sg4 = simgrid::s4u;

namespace tandem {

const char* to_string(Fidelity f) {
  switch (f) {
    case Fidelity::per_pair: return "per_pair";
    case Fidelity::aggregated: return "aggregated";
    case Fidelity::replicated: return "replicated";
  }
  return "?";
}

namespace {

constexpr double kHostSpeed = 1e9;  // host "flop/s": compute durations are played as seconds x speed

// Everything the GPU actors share, read-only once the run starts (and the results they write).
struct World {
  const Program* program = nullptr;
  const SimOptions* options = nullptr;
  std::vector<sg4::Host*> hosts;
  int dp = 1, ep = 1, gpn = 8;
  double comm_sm_fraction = 1.0;  // compute's share of the SMs while comm kernels run
  // Per rank, per task: what it does (identical for every replica of the rank).
  std::vector<std::vector<TaskWork>> work;
  std::vector<std::vector<double>> compute_seconds;  // full SMs
  std::vector<std::vector<double>> compute_seconds_shared;
  const Topology* topo = nullptr;
  std::map<std::tuple<int, double, double>, double> a2a_seconds;  // (rank, IB, NVLink bytes)
  // Results.
  std::vector<double> busy_compute, exposed_comm;
  std::map<std::string, double> seconds_by_kind;  // summed over simulated GPUs
  std::vector<TraceEvent> events;
  double end_time = 0;

  int gpu(int rank, int replica) const { return rank * dp + replica; }
};

// Flows of one all-to-all task from one GPU: (destination GPU, bytes), sent by this GPU.
struct Flow {
  int from = 0, to = 0;
  double bytes = 0;
};

// DeepEP's two legs: IB from `gpu` to the same-local-index GPU of each other node of its EP group,
// then NVLink from each arrival GPU (that node's relay, or `gpu` itself for its own node) to the
// other GPUs of that node. Balanced routing: the task's IB bytes spread evenly over the remote
// nodes, its NVLink bytes over all (arrival, peer) pairs.
std::vector<Flow> all_to_all_flows(const World& w, int gpu, const TaskWork& t, Fidelity f) {
  std::vector<Flow> flows;
  const int ep = w.ep, gpn = std::min(w.gpn, w.ep);
  const int replica = gpu % w.dp, rank = gpu / w.dp;
  const int group_first = replica - replica % ep;  // first replica of the EP group
  const int nodes = std::max(1, ep / gpn);
  const int local = replica % gpn;
  const double ib_per_node = nodes > 1 ? t.ib_bytes / (nodes - 1) : 0.0;
  const double nvl_per_pair = gpn > 1 ? t.nvlink_bytes / (static_cast<double>(nodes) * (gpn - 1)) : 0.0;
  for (int n = 0; n < nodes; ++n) {
    const int arrival_replica = group_first + n * gpn + local;
    const int arrival = w.gpu(rank, arrival_replica);
    const bool remote = arrival_replica / gpn != replica / gpn;
    if (f == Fidelity::aggregated) {
      if (remote && ib_per_node > 0) flows.push_back({gpu, arrival, ib_per_node});
      for (int j = 0; j < gpn; ++j) {
        const int peer = w.gpu(rank, group_first + n * gpn + j);
        if (peer != arrival && nvl_per_pair > 0) flows.push_back({arrival, peer, nvl_per_pair});
      }
    } else {
      // One flow per destination GPU: its share of the node's IB bytes, and its NVLink leg.
      for (int j = 0; j < gpn; ++j) {
        const int peer = w.gpu(rank, group_first + n * gpn + j);
        if (remote && ib_per_node > 0) flows.push_back({gpu, arrival, ib_per_node / gpn});
        if (peer != arrival && nvl_per_pair > 0) flows.push_back({arrival, peer, nvl_per_pair});
      }
    }
  }
  return flows;
}

// The flows of one all-to-all task of `me`'s EP group that `me` sends or receives, in O(ep): all
// of its own flows, and from every other member only the legs that touch `me`'s node.
std::vector<Flow> flows_touching(const World& w, int me, const TaskWork& t, Fidelity f) {
  std::vector<Flow> out = all_to_all_flows(w, me, t, f);  // me as the source
  const int gpn = std::min(w.gpn, w.ep), nodes = std::max(1, w.ep / gpn);
  const int rank = me / w.dp, my_replica = me % w.dp;
  const int first = my_replica - my_replica % w.ep;
  const int my_node = (my_replica - first) / gpn;
  const double ib_per_node = nodes > 1 ? t.ib_bytes / (nodes - 1) : 0.0;
  const double nvl_per_pair = gpn > 1 ? t.nvlink_bytes / (static_cast<double>(nodes) * (gpn - 1)) : 0.0;
  const int ib_flows = f == Fidelity::aggregated ? 1 : gpn;  // per_pair: one per destination GPU
  for (int m = 0; m < w.ep; ++m) {
    const int source = w.gpu(rank, first + m);
    if (source == me) continue;
    const int source_node = m / gpn, source_local = (first + m) % gpn;
    const int arrival = w.gpu(rank, first + my_node * gpn + source_local);  // on my node
    if (arrival == me) {
      if (source_node != my_node && ib_per_node > 0)
        for (int k = 0; k < ib_flows; ++k) out.push_back({source, me, ib_per_node / ib_flows});
      for (int j = 0; j < gpn; ++j) {
        const int peer = w.gpu(rank, first + my_node * gpn + j);
        if (peer != me && nvl_per_pair > 0) out.push_back({me, peer, nvl_per_pair});
      }
    } else if (nvl_per_pair > 0) {
      out.push_back({arrival, me, nvl_per_pair});
    }
  }
  // Keep only what touches `me` (its own list also holds the legs its arrivals forward).
  out.erase(std::remove_if(out.begin(), out.end(), [me](const Flow& fl) { return fl.from != me && fl.to != me; }),
            out.end());
  return out;
}

// The replicated tier's all-to-all time: the aggregated flows of the whole EP group of replicas
// [0, ep) of `rank` loaded onto the Topology's routes; the busiest link sets the time.
double analytic_all_to_all(World& w, int rank, const TaskWork& t) {
  const auto key = std::make_tuple(rank, t.ib_bytes, t.nvlink_bytes);
  auto it = w.a2a_seconds.find(key);
  if (it != w.a2a_seconds.end()) return it->second;
  std::map<int, double> load;
  double latency = 0;
  for (int m = 0; m < w.ep; ++m) {
    for (const Flow& f : all_to_all_flows(w, w.gpu(rank, m), t, Fidelity::aggregated)) {
      const Route r = w.topo->route(f.from, f.to);
      for (const Link& l : r.links) load[l.id] += f.bytes;
      latency = std::max(latency, r.latency);
    }
  }
  double busiest = 0;
  for (const auto& [id, bytes] : load) busiest = std::max(busiest, bytes / w.topo->link(id).bandwidth);
  const double secs = load.empty() ? 0.0 : busiest + latency;
  w.a2a_seconds.emplace(key, secs);
  return secs;
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
        tasks_(w.program->tasks[static_cast<size_t>(rank_)]) {}

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
    while (true) {
      // Start what can start; a task with nothing to wait for ends at once and may free the next.
      while (launch(Stream::compute, next_compute_, compute_running_) ||
             launch(Stream::comm, next_comm_, comm_running_)) {
      }
      if (pending_.empty()) break;
      std::vector<sg4::ActivityPtr> acts;
      acts.reserve(pending_.size());
      for (const auto& p : pending_) acts.push_back(p.activity);
      const ssize_t i = sg4::Activity::wait_any(acts);
      const int task = pending_[static_cast<size_t>(i)].task;
      // A receive counts from when its transfer started, not from when it was posted: waiting
      // for the producer is pipeline bubble, not communication.
      if (tasks_[static_cast<size_t>(task)].kind == TaskKind::pp_recv)
        start_[static_cast<size_t>(task)] = std::max(start_[static_cast<size_t>(task)], acts[static_cast<size_t>(i)]->get_start_time());
      pending_.erase(pending_.begin() + i);
      if (--outstanding_[task] == 0) finish(task);
    }
    finished_ = std::all_of(done_.begin(), done_.end(), [](char d) { return d != 0; });
    if (!finished_) return;  // reported by simulate(): the step cannot proceed on this GPU
    w_.busy_compute[static_cast<size_t>(gpu_)] = busy_compute_;
    w_.exposed_comm[static_cast<size_t>(gpu_)] = exposed();
    w_.end_time = std::max(w_.end_time, sg4::Engine::get_clock());
  }

 private:
  struct Pending {
    sg4::ActivityPtr activity;
    int task;
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
      const bool shared = comm_running_ >= 0;
      const double secs = (shared ? w_.compute_seconds_shared : w_.compute_seconds)[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
      add(sg4::this_actor::exec_async(std::max(secs, 0.0) * kHostSpeed), i);
    } else {
      start_comm(i);
    }
    if (outstanding_[i] == 0) finish(i);
    return true;
  }

  void add(sg4::ActivityPtr a, int task) {
    pending_.push_back({std::move(a), task});
    ++outstanding_[task];
  }

  void put(const std::string& mailbox, double bytes, int task) {
    add(sg4::Mailbox::by_name(mailbox)->put_async(&token_, static_cast<uint64_t>(std::max(bytes, 1.0))), task);
  }
  void get(const std::string& mailbox, int task) {
    payloads_.emplace_back(nullptr);
    add(sg4::Mailbox::by_name(mailbox)->get_async<void>(&payloads_.back()), task);
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
        sg4::Mailbox::by_name("pp/" + std::to_string(replica_) + "/" + std::to_string(t.message))
            ->put_init(&token_, static_cast<uint64_t>(std::max(work.bytes, 1.0)))
            ->detach();
        break;
      case TaskKind::pp_recv:
        get("pp/" + std::to_string(replica_) + "/" + std::to_string(t.message), i);
        break;
      case TaskKind::dispatch_f:
      case TaskKind::dispatch_b:
      case TaskKind::combine_f:
      case TaskKind::combine_b: {
        if (w_.ep <= 1) break;
        if (w_.options->fidelity == Fidelity::replicated) {
          add(sg4::this_actor::exec_async(analytic_all_to_all(w_, rank_, work) * kHostSpeed), i);
          break;
        }
        // This GPU sends its flows (IB legs, and NVLink legs it forwards as an arrival GPU) and
        // receives every flow addressed to it; the task ends when all have completed.
        for (const Flow& fl : flows_touching(w_, gpu_, work, w_.options->fidelity)) {
          if (fl.from == gpu_) put(pair_mailbox("a2a", fl.from, fl.to), fl.bytes, i);
          if (fl.to == gpu_) get(pair_mailbox("a2a", fl.from, fl.to), i);
        }
        break;
      }
      case TaskKind::dp_reduce_scatter:
      case TaskKind::dp_all_gather: {
        // Ring over the data-parallel replicas of this rank: (n-1)/n of the data to the next one.
        const int n = w_.dp;
        if (n <= 1) break;
        if (w_.options->fidelity == Fidelity::replicated) {
          add(sg4::this_actor::exec_async(analytic_ring(w_, rank_, work.bytes) * kHostSpeed), i);
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

  void finish(int i) {
    const Task& t = tasks_[static_cast<size_t>(i)];
    const double now = sg4::Engine::get_clock();
    const double begin = start_[static_cast<size_t>(i)];
    done_[static_cast<size_t>(i)] = 1;
    w_.seconds_by_kind[to_string(t.kind)] += now - begin;
    if (t.stream == Stream::compute) {
      compute_running_ = -1;
      busy_compute_ += now - begin;
    } else {
      comm_running_ = -1;
      comm_intervals_.push_back({begin, now});
    }
    if (gpu_ < w_.options->trace_gpus) {
      const TaskWork& work = w_.work[static_cast<size_t>(rank_)][static_cast<size_t>(i)];
      w_.events.push_back(TraceEvent{gpu_, rank_, to_string(t.stream), to_string(t.kind), t.block,
                                     t.chunk.micro_batch, t.chunk.stage, begin, now,
                                     work.compute.flops(), t.stream == Stream::comm ? work.bytes : work.compute.bytes()});
    }
    if (t.stream == Stream::compute) compute_intervals_.push_back({begin, now});
  }

  // Time the comm stream was busy while the compute stream was idle.
  double exposed() const {
    double total = 0;
    size_t c = 0;
    for (const auto& [b, e] : comm_intervals_) {
      double covered = 0;
      while (c < compute_intervals_.size() && compute_intervals_[c].second <= b) ++c;
      for (size_t k = c; k < compute_intervals_.size() && compute_intervals_[k].first < e; ++k)
        covered += std::max(0.0, std::min(e, compute_intervals_[k].second) - std::max(b, compute_intervals_[k].first));
      total += (e - b) - covered;
    }
    return total;
  }

  World& w_;
  int gpu_, rank_, replica_;
  const std::vector<Task>& tasks_;
  std::vector<char> done_;
  std::vector<double> start_;
  std::vector<Pending> pending_;
  std::map<int, int> outstanding_;
  std::deque<void*> payloads_;
  int token_ = 0;
  size_t next_compute_ = 0, next_comm_ = 0;
  int compute_running_ = -1, comm_running_ = -1;
  double busy_compute_ = 0;
  bool finished_ = false;
  std::vector<std::pair<double, double>> compute_intervals_, comm_intervals_;
};

// The kernel data shipped with tandem (H800; its tensor cores equal the H100's and H200's).
std::string default_calibration() { return std::string(TANDEM_SOURCE_DIR) + "/sim/calibration/h800-deepgemm.yaml"; }

}  // namespace

Result<SimResult> simulate(const Scenario& s, const SimOptions& o) {
  return catch_input_errors([&]() -> SimResult {
    const auto wall0 = std::chrono::steady_clock::now();
    const std::string cal_path = o.calibration.empty() ? default_calibration() : o.calibration;
    auto cal = load_calibration(cal_path);
    if (!cal) throw InputException(cal.error());
    const ComputeCostModel costs(s.cluster.gpu, cal.value());
    const Workload w = scenario_workload(s);
    const StagePartition part = partition_stages(w, s.stages(), s.schedule.stage_layers, s.file, "plan.pp");
    const Schedule sch = make_schedule(s.schedule.kind, static_cast<int>(s.plan.pp),
                                       static_cast<int>(s.micro_batches()), s.file, "schedule.kind");
    const Program prog = build_program(sch, w, part);
    auto say = [&](const std::string& what) {
      if (!o.progress) return;
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
      std::fprintf(stderr, "[%7.2f s] %s\n", t, what.c_str());
    };
    size_t ntasks = 0;
    for (const auto& tasks : prog.tasks) ntasks += tasks.size();
    say("program: " + std::to_string(sch.ranks) + " pipeline ranks, " + std::to_string(ntasks) + " tasks (" +
        to_string(s.schedule.kind) + ", " + std::to_string(sch.micro_batches) + " micro-batches)");

    World world;
    world.program = &prog;
    world.options = &o;
    world.dp = static_cast<int>(s.plan.dp);
    world.ep = static_cast<int>(s.plan.ep);
    world.gpn = static_cast<int>(s.cluster.gpus_per_node);
    world.comm_sm_fraction = static_cast<double>(s.cluster.gpu.sms - s.comm.sms) / static_cast<double>(s.cluster.gpu.sms);
    for (int r = 0; r < sch.ranks; ++r) {
      std::vector<TaskWork> works;
      std::vector<double> full, shared;
      for (const Task& t : prog.tasks[static_cast<size_t>(r)]) {
        works.push_back(task_work(s, w, prog, r, t));
        const bool compute = t.stream == Stream::compute;
        full.push_back(compute ? costs.pass_seconds(works.back().compute, works.back().backward, 1.0) : 0.0);
        shared.push_back(compute ? costs.pass_seconds(works.back().compute, works.back().backward, world.comm_sm_fraction) : 0.0);
      }
      world.work.push_back(std::move(works));
      world.compute_seconds.push_back(std::move(full));
      world.compute_seconds_shared.push_back(std::move(shared));
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
    popt.host_cores = 2;  // compute and comm streams time themselves with concurrent execs
    SimgridPlatform platform(engine, topo, kHostSpeed, popt);
    const int gpus = static_cast<int>(s.gpus);
    world.busy_compute.assign(static_cast<size_t>(gpus), 0);
    world.exposed_comm.assign(static_cast<size_t>(gpus), 0);
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
    engine.run();
    say("done");
    for (const auto& runner : runners)
      if (!runner->finished())
        throw std::runtime_error("the simulation could not finish the step: " + runner->stuck_at() +
                                 " at simulated time " + std::to_string(sg4::Engine::get_clock()) + " s");

    SimResult r;
    r.step_time_s = world.end_time;
    r.gpus_simulated = static_cast<int>(simulated.size());
    for (int g : simulated) {
      r.compute_busy_s += world.busy_compute[static_cast<size_t>(g)] / static_cast<double>(simulated.size());
      r.exposed_comm_s += world.exposed_comm[static_cast<size_t>(g)] / static_cast<double>(simulated.size());
    }
    for (const auto& [kind, secs] : world.seconds_by_kind) r.seconds_by_kind[kind] = secs / static_cast<double>(simulated.size());
    r.model_flops_per_gpu = w.train_flops_per_token(true) * s.tokens_per_step() / static_cast<double>(s.gpus);
    r.trace.engine = "sim";
    r.trace.scenario = s.name;
    r.trace.events = std::move(world.events);
    std::sort(r.trace.events.begin(), r.trace.events.end(),
              [](const TraceEvent& a, const TraceEvent& b) { return std::tie(a.gpu, a.start) < std::tie(b.gpu, b.start); });
    r.sim_wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return r;
  });
}

}  // namespace tandem
