// The simulator: runs a scenario's Program on a SimGrid model of its cluster and writes a Trace.
//
// Every GPU is a host. Each simulated GPU runs its pipeline rank's tasks on a compute and a comm
// stream, each in Program order, a task starting once its stream is free and its dependencies
// are done — a state machine (sim/gpu_runner.h) driven by one event loop (sim/event_loop.h), not
// a SimGrid actor: kernels and analytic transfers are the loop's timers, messages are SimGrid
// flows; what the GPUs share is a StepContext (sim/step_context.h). Compute tasks take the time
// their TaskCost gives (scenarios/task_cost.h: the calibrated kernel model on the SMs the
// scenario gives compute); comm tasks run their own kernels first (casts, DeepEP's
// notify) and then their transfers as SimGrid flows on the cluster's fabric (or the analytic
// plan of sim/all_to_all.h), so contention comes from SimGrid's max-min flow model configured
// for an HPC fabric (CM02, no cross-traffic, no TCP gamma).
//
// Placement: GPU g = rank * dp + replica, so each node holds the same pipeline rank of gpus_per_node
// consecutive replicas and an EP group (ep consecutive replicas of one rank) spans ep /
// gpus_per_node whole nodes, as DeepSeek-V3's EP64 spans 8 nodes.
//
// Fidelity tiers (sim/README.md):
//   per_pair:   every all-to-all is one flow per (source GPU, destination GPU) pair — the IB leg
//               carries that pair's share of its node's deduplicated bytes, then the relay's NVLink
//               leg; the finest granularity, the reference the others are checked against.
//   aggregated: DeepEP's flows as the hardware carries them: one IB flow per (GPU, destination
//               node) to the same-local-index GPU there, and one NVLink flow per forwarded peer.
//   replicated: one pipeline replica is simulated (its PP transfers as flows); since balanced
//               routing makes every replica and every EP group behave alike and EP groups share
//               no links on the multi-plane fabric, each all-to-all takes its analytic plan's time
//               (the group's aggregated flows on the fabric's links, each flow as long as the
//               busiest link on its route needs, all starting together), and each DP ring,
//               pipelined, the time of its (n-1)/n bytes over the ring's slowest hop plus one
//               latency (the all-GPU tiers send the same bytes as one flow per hop). Fast enough
//               for 2048 GPUs and beyond.
//   grouped:    every GPU simulated (PP and DP transfers as flows); each all-to-all is a collective
//               of its EP group: when the last member arrives, every member's end follows from
//               the members' arrival times and the same analytic plan (a flow starts once both
//               its ends have arrived). Works with skewed routing (hot GPUs, stragglers) at 2048
//               GPUs; refused by the replicated tier.
// per_pair, aggregated and grouped simulate every GPU. Flows follow each MoE layer's
// RoutingPattern: balanced routing spreads a GPU's bytes evenly over its destinations, skewed
// routing sends more to the GPUs of popular experts, which also compute more.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/input_error.h"
#include "common/gpu_time.h"
#include "common/trace.h"
#include "scenarios/scenario.h"

namespace tandem {

enum class Fidelity { per_pair, aggregated, grouped, replicated };
const char* to_string(Fidelity f);

struct SimOptions {
  Fidelity fidelity = Fidelity::replicated;
  // Kernel cost data laid over the scenario's own (Scenario::calibration): overlays or
  // `tandem bench --json` outputs. `tandem simulate --calibration` adds them to the scenario
  // instead, so the stage balancer weighs with them too.
  std::vector<std::string> calibration;
  bool trace = false;       // record trace events of ...
  // ... one GPU per pipeline rank (each rank's first replica: every simulated rank in the
  // replicated tier) when 0, or of GPUs 0..N-1 (global ids: rank * dp + replica) when N > 0.
  int trace_gpus = 0;
  bool progress = false;
  // The scenario's stage partition (scenario_partition), when the caller has it already: the
  // balancer is not cheap for deep pipelines. Null: the engine balances.
  const StagePartition* partition = nullptr;
};

struct SimResult {
  double step_time_s = 0;
  double sim_wall_s = 0;
  int gpus_simulated = 0;
  // Where each simulated GPU's step went (in GPU order), folded as the tasks finished; reports/
  // turns them into the step's metrics.
  std::vector<GpuTime> gpu_times;
  // Tiers that simulate every GPU: per GPU, the seconds others spent waiting for it — members of
  // its EP group at all-to-alls it reached last, and the next pipeline rank at receives of its
  // sends. Empty in the replicated tier.
  std::vector<double> waited_on_a2a_s, waited_on_pp_s;
  Trace trace;
};

// Runs one training step. Input errors (e.g. a bad calibration file) come back as values.
Result<SimResult> simulate(const Scenario& s, const SimOptions& o);

}  // namespace tandem
