// Scenario: one training job — which model on which cluster, how it is parallelised and
// scheduled, batch, precision, communication settings, routing and recompute choices.
//
// Loading resolves the model and cluster cards (and the calibration files) (paths relative to the scenario file; a
// `model:`/`cluster:` section may instead be a map with `card:` plus overrides of that card's
// keys), applies command-line overrides (`--set plan.pp=8`, `--set cluster.nic_gbps=800`,
// `--set model.num_hidden_layers=8`) and validates the whole: every error names the file, the
// dotted key and the reason. A loaded Scenario is feasible: the plan divides the cluster, the
// schedule's rules hold and the busiest GPU's memory fits its HBM.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/input_error.h"
#include "models/model_card.h"
#include "models/precision.h"
#include "models/workload.h"
#include "scenarios/program.h"
#include "scenarios/schedules/schedule_table.h"
#include "scenarios/stage_partition.h"
#include "topologies/cluster_card.h"
#include "topologies/network_faults.h"

namespace tandem {

struct ParallelPlan {
  int64_t pp = 1;          // pipeline ranks
  int64_t ep = 1;          // expert-parallel degree, formed across data-parallel replicas
  int64_t tp = 1;          // tensor parallelism: not modelled, must be 1
  int64_t dp = 1;          // derived: gpus / (pp * tp)
  int64_t zero_stage = 1;  // ZeRO-1: optimizer states sharded over data-parallel copies
  bool dp_overlap = false; // each stage's gradient reduce-scatter right after its last W pass
};

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::dualpipe;
  std::vector<int64_t> stage_layers;  // optional manual partition: transformer layers per stage
};

struct BatchSpec {
  int64_t global_sequences = 0;
  int64_t seq_len = 4096;
  int64_t micro_batch_sequences = 1;
};

struct CommSpec {
  int64_t sms = 20;         // SMs held by communication kernels while they run
  int64_t node_limit = 0;   // max nodes (expert groups) per token
};

// How tokens pick experts, through the model's own gate (models/routing_fanout.h), seeded:
// balanced: i.i.d. affinities, every expert alike;
// skewed:   per layer, each expert's logit offset by b_e ~ N(0, skew^2): popular experts, hot
//           GPUs, stragglers at every all-to-all.
// measured: per layer, the offsets fitted to a measured histogram of tokens per expert
//           (models/routing_histogram.h), so the gate reproduces its expert frequencies.
enum class RoutingModel { balanced, skewed, measured };
const char* to_string(RoutingModel m);

struct RoutingSpec {
  RoutingModel model = RoutingModel::balanced;
  double skew = 0;  // skewed only: the spread of the per-expert logit offsets
  // measured only: the histogram file (resolved against the scenario file), loaded and checked
  // against the scenario's model.
  std::string histogram_file;
  std::shared_ptr<const RoutingHistogram> histogram;
  uint64_t seed = 1;
  // Per micro-batch variation (any model): each GPU's routed rows in each MoE layer and
  // micro-batch are its share x (1 + noise z), z ~ N(0, 1) drawn from (seed, layer, micro-batch,
  // GPU) — the token mix changes from one micro-batch to the next (a mean of 1, in expectation).
  double noise = 0;
};

// What-ifs of a degraded cluster. Stragglers: GPUs whose kernels run at `slow_speed` x their
// nominal rate (an SM clock or thermal throttle; transfers are not slowed) — the GPUs listed, and
// a seeded fraction of all GPUs. The fabric: NICs or whole planes down (routes go around them,
// topologies/topology.h), NICs at `nic_speed` of their line rate (a link trained down). Only the
// tiers that simulate every GPU model them.
struct FaultSpec {
  std::vector<int64_t> slow_gpus;
  double slow_fraction = 0;
  double slow_speed = 1;
  uint64_t seed = 1;
  NetworkFaults network;
  bool slow_kernels() const { return (!slow_gpus.empty() || slow_fraction > 0) && slow_speed != 1; }
  bool any() const { return slow_kernels() || network.any(); }
  // Every GPU's kernel speed factor (1: nominal), for a cluster of `gpus` GPUs.
  std::vector<double> gpu_speed(int64_t gpus) const;
};

struct Scenario {
  std::string name;
  std::string file;
  std::string description;
  std::vector<std::string> overrides;  // as given with --set, for the record

  ModelCard model;
  ClusterCard cluster;
  int64_t gpus = 0;
  ParallelPlan plan;
  ScheduleSpec schedule;
  BatchSpec batch;
  PrecisionRecipe precision;
  RecomputePolicy recompute;
  CommSpec comm;
  RoutingSpec routing;
  FaultSpec faults;
  // Kernel-level cost data for the simulator, in order (paths resolved against the scenario
  // file): a complete calibration first or none (the shipped H800 one), then overlays — e.g. the
  // calibration `tandem calibrate` derived from a profiler trace. sim/compute_cost.h.
  std::vector<std::string> calibration;

  int64_t stages() const { return schedule_traits(schedule.kind).stages(plan.pp); }
  int64_t micro_batches() const {  // per pipeline per step
    return batch.global_sequences / (plan.dp * batch.micro_batch_sequences);
  }
  MicroBatch micro_batch() const { return {batch.micro_batch_sequences, batch.seq_len}; }
  ExpertLayout expert_layout() const {
    return {plan.ep, cluster.gpus_per_node, comm.node_limit, routing.seed,
            routing.model == RoutingModel::skewed ? routing.skew : 0.0,
            routing.model == RoutingModel::measured ? routing.histogram : nullptr};
  }
  double tokens_per_step() const {
    return static_cast<double>(batch.global_sequences) * static_cast<double>(batch.seq_len);
  }
  // SMs the GEMMs and attention are given. With expert-parallel all-to-alls, DeepEP's kernels
  // hold comm.sms SMs and compute kernels are sized for the rest, the whole step through (DeepSeek's
  // profiler trace shows every FP8 GEMM as a persistent kernel of exactly 132 - 20 = 112 CTAs,
  // with or without a transfer beside it: a kernel on every SM would keep the communication
  // kernels from starting). Without all-to-alls, compute has the whole GPU.
  int64_t gemm_sms() const {
    const bool all_to_all = plan.ep > 1 && model.n_routed_experts > 0;
    return all_to_all ? std::max<int64_t>(1, cluster.gpu.sms - comm.sms) : cluster.gpu.sms;
  }
};

// Writes the scenario file `path` with `overrides` applied as a card of its own at `out`: the
// same keys, the overridden values in place, and its file references (model, cluster,
// calibration) re-pointed relative to `out`'s folder, so `load_scenario(out)` gives the scenario
// that `load_scenario(path, overrides)` gives. `header` goes first as YAML comments; a non-empty
// `description` replaces the card's (which described the plan before the overrides).
void write_scenario_card(const std::string& path, const std::vector<std::string>& overrides, const std::string& out,
                         const std::string& header, const std::string& description = "");

// Throws InputException about `key` (dotted) of a loaded scenario, for checks made after loading
// (what an engine supports, its budget): the file is named as load_scenario names it — "FILE
// [--set]" when a --set wrote the key or a section above it, "FILE [with --set ...]" when other
// overrides were given (they may be the cause), else the scenario file.
[[noreturn]] void fail_scenario_key(const Scenario& s, const std::string& key, const std::string& reason);

// Loads, resolves and validates a scenario file. `overrides` are "dotted.key=value" strings.
// Validation balances the stages (scenario_partition) to check memory; `partition`, when given,
// receives that partition, so a caller that needs it does not balance again.
Result<Scenario> load_scenario(const std::string& path, const std::vector<std::string>& overrides = {},
                               StagePartition* partition = nullptr);

struct Calibration;  // sim/compute_cost.h

// The scenario's kernel cost data (Scenario::calibration resolved; parsed once per process).
Calibration scenario_calibration(const Scenario& s);

// The workload of one micro-batch of this scenario.
Workload scenario_workload(const Scenario& s);

// The stage partition both engines run: the manual one (schedule.stage_layers), or the balancer's
// (scenarios/stage_partition.h) weighing each block by its compute seconds from the scenario's
// calibration (sim/compute_cost.h), with DualPipe's mirrored stage pairs.
StagePartition scenario_partition(const Scenario& s, const Workload& w);

// The Program both engines run: make_plan (scenarios/plan.h).

// The step time of the scenario's Program with partition `p`, played without a network model
// (scenarios/program_timeline.h): compute tasks timed by the calibrated cost model, all-to-alls
// by their bytes at the rates DeepEP reaches, pipeline and ring transfers at the NIC's line rate.
// What the balancer minimises; close to the simulator's replicated tier for balanced routing.
double estimate_step_seconds(const Scenario& s, const Workload& w, const StagePartition& p);

// Throws InputException (key `plan`) when the busiest GPU of this partition exceeds its HBM.
void check_memory_fits(const Scenario& s, const StagePartition& part);

}  // namespace tandem
