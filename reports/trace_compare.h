// Trace comparison: two traces of one program (sim vs exec, sim vs sim under two calibrations or
// tiers, exec vs exec on two machines), aligned task by task.
//
// A task's identity is its pipeline rank, stream, kind, layer block, micro-batch, stage and
// schedule slot (and, should the program repeat that identity, its occurrence in order): the same
// in both engines, since both run the same Program. Each trace is compared through one GPU per
// pipeline rank, its lowest-numbered (replica 0 when it was traced): the simulator traces one per
// rank by default, the executor every world rank. Tasks found on one side only are listed, never
// dropped.
//
// Contract: compare_traces refuses (InputError naming B's file and `otherData.program` or
// `otherData.scenario`) two traces whose scenario names differ, or whose program digests differ
// when both carry one: their tasks cannot align, and a comparison would mislead.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"
#include "common/trace.h"

namespace tandem {

struct TaskIdentity {
  int rank = 0;
  std::string stream, kind;
  int block = -1, micro_batch = -1, stage = -1, slot = -1;
  int occurrence = 0;  // among tasks of the same identity on the rank, in start order
  std::string describe() const;  // "rank 0 attn_f block 3 mb 2 stage 0 slot 5"
};

struct AlignedTask {
  TaskIdentity id;
  double a_s = 0, b_s = 0;  // durations
};

struct KindComparison {
  std::string kind;
  int tasks = 0;            // aligned, summed over ranks
  double a_s = 0, b_s = 0;  // per GPU per step: summed over the compared GPUs / ranks
};

struct RankComparison {
  int rank = 0;
  int a_gpu = -1, b_gpu = -1;
  double a_compute_s = 0, b_compute_s = 0, a_comm_s = 0, b_comm_s = 0;  // stream busy time
  double a_end_s = 0, b_end_s = 0;                                      // its last task's end
};

struct TraceComparison {
  // false: tasks aligned one to one. true: B holds per-kind measurements without task identities
  // (a profiler trace through the kernel rules), so kinds align: per kind, A's mean per task
  // against B's mean per measured instance.
  bool kinds_only = false;
  std::string a_file, b_file, a_engine, b_engine, scenario, program;
  double a_step_s = 0, b_step_s = 0;  // the latest end over the compared GPUs
  int aligned = 0;
  std::vector<KindComparison> kinds;    // by A's time, most first
  std::vector<RankComparison> ranks;
  std::vector<AlignedTask> most_different;  // by |B - A|, largest first (at most `top`)
  std::vector<TaskIdentity> only_in_a, only_in_b;
  std::vector<std::string> kinds_only_in_a, kinds_only_in_b;  // kinds_only comparisons
};

// One task kind measured without task identities: `instances` tasks of `seconds` each (mean).
struct MeasuredKind {
  std::string kind;
  int instances = 0;
  double seconds = 0;
};

// A trace against per-kind measurements (kinds_only): A's tasks of a measured kind on the layer
// blocks `blocks` (those the measurement stands for; all blocks when empty) give A's mean.
TraceComparison compare_with_measured_kinds(const Trace& a, const std::string& a_file, const std::vector<MeasuredKind>& b,
                                            const std::string& b_file, const std::string& b_engine,
                                            const std::vector<int>& blocks);

Result<TraceComparison> compare_traces(const Trace& a, const std::string& a_file, const Trace& b,
                                       const std::string& b_file, int top = 10);

std::string comparison_text(const TraceComparison& c);
nlohmann::json comparison_json(const TraceComparison& c);

}  // namespace tandem
