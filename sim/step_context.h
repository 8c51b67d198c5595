// StepContext: what the runners of one simulated step share (sim/gpu_runner.h) — the Program
// and its per-task costs, the fabric and its all-to-all plans, the routing, the faults — read-only
// once the run starts, and the accounts they write: where each GPU's time went, who waited on
// whom, trace events.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/gpu_time.h"
#include "common/signed_index.h"
#include "common/trace.h"
#include "models/workload.h"
#include "scenarios/program.h"
#include "scenarios/task_work.h"
#include "sim/all_to_all.h"
#include "sim/compute_cost.h"
#include "sim/engine.h"
#include "sim/event_loop.h"
#include "topologies/topology.h"

namespace tandem {

struct StepContext {
  const Program* program = nullptr;
  const SimOptions* options = nullptr;
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
  double speed(int gpu) const { return gpu_speed.empty() ? 1.0 : gpu_speed[idx(gpu)]; }
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

  // An all-to-all's analytic plan, once per (rank, block, bytes per copy): EP groups of one rank
  // route over disjoint, isomorphic links and share the layer's RoutingPattern, so the first
  // group's figures stand for all of them — unless NICs, planes or spines are down or slow,
  // which makes groups differ: then once per group. `task` keys a per-task shortcut.
  const A2APlan& all_to_all_plan(const A2AGroup& g, int task, int block, double bytes_per_copy);
  // The replicated tier's ring collective, pipelined: (n-1)/n of the bytes over the slowest hop
  // of the ring plus one latency (the full tiers send the same bytes as one flow per hop).
  double ring_seconds(int rank, double bytes) const;
};

}  // namespace tandem
