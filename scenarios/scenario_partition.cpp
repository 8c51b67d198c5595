// scenario_partition (scenario.h): the stage partition of a scenario, weighed with its calibrated
// costs and its schedule.
//
// One stage per rank (1F1B, ZB1P): the stages' load is balanced — each block's compute seconds
// and, as these schedules never overlap a chunk's all-to-alls with other work, its all-to-alls.
// Mirrored stages (DualPipe, DualPipeV: rank r holds stages r and S-1-r): the compute is balanced
// first, then layers move one at a time while that shortens the step of the scenario's Program
// played with the calibrated task times (program_timeline.h): an overlapped F&B slot hides a
// layer's transfers behind the other chunk's layer beside it, so a rank with unequal stages leaves
// the longer chunk's extra layers exposed, and the rank holding the embedding, the head and the
// MTP module should take fewer layers only where its neighbours do not stall for it.
#include <limits>
#include <map>
#include <tuple>
#include <mutex>

#include "common/signed_index.h"
#include "scenarios/memory.h"
#include "scenarios/scenario.h"
#include "scenarios/schedules/schedule.h"
#include "scenarios/program.h"
#include "scenarios/program_timeline.h"
#include "scenarios/task_cost.h"
#include "scenarios/task_work.h"
#include "sim/compute_cost.h"

namespace tandem {

namespace {

// The balancer's estimate of an all-to-all's transfer: the busier of the GPU's IB and NVLink legs
// at the rates DeepEP reaches (the simulator times the same bytes on the cluster's links).
double transfer_seconds(const Scenario& s, const Calibration& cal, const TaskWork& work) {
  const AllToAllCalibration& a = cal.all_to_all;
  const double nic = s.cluster.nic_gbps * 1e9 / 8.0 * static_cast<double>(s.cluster.nics_per_gpu) * a.ib_efficiency;
  const double nvl = s.cluster.nvlink_gbytes_s * 1e9 * a.nvlink_efficiency;
  // Every leg also waits its route's latency: an IB route when the EP group spans nodes.
  const double latency = (s.plan.ep > s.cluster.gpus_per_node ? s.cluster.fabric.latency_cross_leaf_us
                                                               : s.cluster.nvlink_latency_us) * 1e-6;
  return std::max(nic > 0 ? work.ib_bytes / nic : 0.0, nvl > 0 ? work.nvlink_bytes / nvl : 0.0) + latency;
}

// A point-to-point or ring transfer over one GPU's NIC at its line rate, with the fabric's latency.
double link_seconds(const Scenario& s, double bytes) {
  const double nic = s.cluster.nic_gbps * 1e9 / 8.0 * static_cast<double>(s.cluster.nics_per_gpu);
  return (nic > 0 ? bytes / nic : 0.0) + s.cluster.fabric.latency_cross_leaf_us * 1e-6;
}

// The step of `p` with every task timed as the engine times it, the network estimated (see
// above). Task costs depend on the task's kind, block and slot kind only, so they are cached
// across the candidate partitions of one balancing.
class StepEstimate {
 public:
  StepEstimate(const Scenario& s, const Workload& w, const Calibration& cal) : s_(s), w_(w), cal_(cal), costs_(s.cluster.gpu, cal) {}

  double operator()(const Schedule& sch, const StagePartition& part) {
    const Program prog = build_program(sch, w_, part, ProgramOptions{s_.plan.dp_overlap});
    std::vector<std::vector<double>> secs(prog.tasks.size());
    for (size_t r = 0; r < prog.tasks.size(); ++r)
      for (const Task& t : prog.tasks[r]) secs[r].push_back(seconds(prog, static_cast<int>(r), t));
    TaskTimes times;
    times.duration = [&](int r, int i) { return secs[idx(r)][idx(i)]; };
    times.transfer = times.duration;
    const ProgramTimeline run = play_program(prog, times);
    return run.finished ? run.step_time : std::numeric_limits<double>::infinity();
  }

 private:
  double seconds(const Program& prog, int rank, const Task& t) {
    const bool cacheable = t.block >= 0;
    const auto key = std::make_tuple(static_cast<int>(t.kind), t.block, in_overlapped_slot(prog, rank, t));
    if (cacheable)
      if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    const TaskWork work = task_work(s_, w_, prog, rank, t);
    const TaskCost c = task_cost(s_, prog, rank, t, work, costs_);
    double v = c.seconds;
    A2AKind a;
    if (a2a_kind(t.kind, &a) && s_.plan.ep > 1) v += transfer_seconds(s_, cal_, work) * c.transfer_scale;
    if (t.kind == TaskKind::pp_recv) v = link_seconds(s_, work.bytes);
    if (t.kind == TaskKind::dp_reduce_scatter || t.kind == TaskKind::dp_all_gather) {
      const double n = static_cast<double>(s_.plan.dp);
      v = n > 1 ? link_seconds(s_, work.bytes * (n - 1) / n) : 0.0;
    }
    if (cacheable) cache_.emplace(key, v);
    return v;
  }

  const Scenario& s_;
  const Workload& w_;
  const Calibration& cal_;
  ComputeCostModel costs_;
  std::map<std::tuple<int, int, bool>, double> cache_;
};

}  // namespace

// Calibrations by file list, parsed once per process: scenarios are loaded often (sweeps, plan
// searches, fuzzing), the files rarely change under a running process.
Calibration scenario_calibration(const Scenario& s) {
  static std::mutex mu;
  static std::map<std::vector<std::string>, Calibration> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(s.calibration); it != cache.end()) return it->second;
  }
  Calibration c = resolve_calibration(s.calibration);
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(s.calibration, std::move(c)).first->second;
}

double estimate_step_seconds(const Scenario& s, const Workload& w, const StagePartition& p) {
  const Calibration cal = scenario_calibration(s);
  const Schedule sch = make_schedule(s.schedule.kind, static_cast<int>(s.plan.pp), static_cast<int>(s.micro_batches()),
                                     s.file, "schedule.kind");
  StepEstimate step(s, w, cal);
  return step(sch, p);
}

StagePartition scenario_partition(const Scenario& s, const Workload& w) {
  if (!s.schedule.stage_layers.empty()) return partition_stages(w, s.stages(), s.schedule.stage_layers, s.file, "plan.pp");
  const Calibration cal = scenario_calibration(s);
  const ComputeCostModel costs(s.cluster.gpu, cal);
  const int64_t sms = s.gemm_sms();
  const ScheduleTraits& schedule = schedule_traits(s.schedule.kind);
  StageLayoutOptions o;
  o.mirrored = schedule.mirrored;
  // Without overlapped F&B slots (1F1B, ZB1P) a chunk waits for each of its all-to-alls.
  const bool waits_for_all_to_all = !schedule.overlapped_slots && s.plan.ep > 1;
  for (size_t b = 0; b < w.blocks.size(); ++b) {
    const Block& blk = w.blocks[b];
    double t = 0;
    for (const Op& op : blk.ops) {
      PassCost backward = op.bwd_input;
      backward += op.recompute;
      t += costs.pass_seconds(op.fwd, false, sms) + costs.pass_seconds(backward, true, sms) +
           costs.pass_seconds(op.bwd_weight, false, sms);
    }
    if (waits_for_all_to_all && blk.has_all_to_all)
      for (TaskKind k : {TaskKind::dispatch_f, TaskKind::combine_f, TaskKind::combine_b, TaskKind::dispatch_b}) {
        Task task;
        task.kind = k;
        task.block = static_cast<int>(b);
        task.stream = Stream::comm;
        const Program none;
        const TaskWork work = task_work(s, w, none, 0, task);
        const TaskCost c = task_cost(s, none, 0, task, work, costs);
        t += c.seconds + transfer_seconds(s, cal, work) * c.transfer_scale;
      }
    o.block_seconds.push_back(t);
  }
  StagePartition best = partition_stages(w, s.stages(), {}, s.file, "plan.pp", o);
  const int64_t S = s.stages();
  if (S < 2) return best;

  const Schedule sch = make_schedule(s.schedule.kind, static_cast<int>(s.plan.pp), static_cast<int>(s.micro_batches()),
                                     s.file, "schedule.kind");
  StepEstimate step(s, w, cal);
  {
    // Other starts, kept when the schedule runs faster on them: the stages' compute alone
    // balanced in seconds, or in training FLOPs (which keeps the transformer layers evenly spread
    // when the head and the MTP module weigh more in seconds).
    auto same_cut = [&](StagePartition p) {
      std::vector<int64_t> layers;
      for (const Stage& st : p.stages) layers.push_back(st.layers);
      return partition_stages(w, S, layers, s.file, "plan.pp", o);  // that cut, with this load
    };
    StageLayoutOptions compute_only = o, by_flops = o;
    for (size_t b = 0; b < w.blocks.size(); ++b) compute_only.block_seconds[b] = 0;
    by_flops.block_seconds.clear();
    double best_step = step(sch, best);
    if (!schedule.overlapped_slots) {
      // Recompute the compute-only weights: the blocks' load above also holds their all-to-alls.
      for (size_t b = 0; b < w.blocks.size(); ++b)
        for (const Op& op : w.blocks[b].ops) {
          PassCost backward = op.bwd_input;
          backward += op.recompute;
          compute_only.block_seconds[b] += costs.pass_seconds(op.fwd, false, sms) + costs.pass_seconds(backward, true, sms) +
                                           costs.pass_seconds(op.bwd_weight, false, sms);
        }
    }
    for (const StageLayoutOptions* alt_o : {schedule.overlapped_slots ? nullptr : &compute_only, &by_flops}) {
      if (!alt_o) continue;
      const StagePartition alt = same_cut(partition_stages(w, S, {}, s.file, "plan.pp", *alt_o));
      const double t = step(sch, alt);
      if (t < best_step) {
        best_step = t;
        best = alt;
      }
    }
  }
  // One stage per rank: the busiest stage paces the pipeline, and one of the balanced starts is
  // the answer. Mirrored stages go on, layer by layer, against the schedule itself.
  if (!o.mirrored) return best;
  auto fits = [&](const StagePartition& p) {
    const double hbm = s.cluster.gpu.hbm_gbytes * 1e9;
    for (const RankMemory& m : memory_per_rank(s, p))
      if (m.total() > hbm) return false;
    return true;
  };
  std::vector<int64_t> layers;
  for (const Stage& st : best.stages) layers.push_back(st.layers);
  double best_step = step(sch, best);
  const bool start_fits = fits(best);
  // Hill climbing over single-layer moves between neighbouring stages, in a fixed order: the
  // first improving move is taken, until none improves.
  for (int pass = 0; pass < 64; ++pass) {
    bool improved = false;
    for (int64_t i = 0; i + 1 < S && !improved; ++i) {
      for (int dir : {+1, -1}) {
        std::vector<int64_t> trial = layers;
        const size_t from = idx(dir > 0 ? i : i + 1), to = idx(dir > 0 ? i + 1 : i);
        // Every stage but the last keeps a layer; the last may hold only the head and MTP.
        const int64_t keep = from + 1 == idx(S) ? 0 : 1;
        if (trial[from] <= keep) continue;
        --trial[from];
        ++trial[to];
        const StagePartition p = partition_stages(w, S, trial, s.file, "plan.pp", o);
        const double t = step(sch, p);
        if (t < best_step * (1 - 1e-9) && (!start_fits || fits(p))) {
          best_step = t;
          layers = trial;
          best = p;
          improved = true;
          break;
        }
      }
    }
    if (!improved) break;
  }
  return best;
}

}  // namespace tandem
