// UnitCostEngine: runs a Schedule with given slot durations and zero communication time.
//
// Each rank runs its slots in order; a slot starts when the rank is free and every activation or
// gradient it needs has been sent (at the end of its producer's release slot). Durations: F, B
// (full backward), W (weight part of a backward; a B* slot takes B - W), FB (an overlapped F&B
// slot). It returns per-rank busy time, bubble (step time - busy, the table's definition) and
// peak live activations in micro-batch chunks (a chunk is live from the start of its F to the
// end of its B), in all and per phase (per stage the rank holds), and the slot timeline for
// drawing. The peaks depend on each rank's slot order only, not on the durations.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "scenarios/schedules/schedule.h"

namespace tandem {

struct UnitCosts {
  double F = 1, B = 2, W = 1, FB = 3;
  double duration(SlotKind k) const;
};

struct SlotTiming {
  double start = 0, end = 0;
};

struct UnitCostRun {
  bool finished = false;
  std::string stuck;  // when not finished: which rank waits at which slot, for what
  double step_time = 0;
  std::vector<double> busy, bubble;      // per rank
  std::vector<int> peak_activations;     // per rank, in micro-batch chunks
  std::vector<std::vector<int>> peak_by_phase;  // per rank, per phase: each held stage's own peak
  std::vector<std::vector<SlotTiming>> timeline;  // per rank, per slot
  double max_bubble() const;
};

UnitCostRun run_unit_costs(const Schedule& s, const UnitCosts& c);

// The same run with each slot's duration given per rank and slot (e.g. from the stages the slot's
// chunks hold): what the stage balancer weighs candidate partitions with.
using SlotDuration = std::function<double(int rank, const Slot& slot)>;
UnitCostRun run_slot_costs(const Schedule& s, const SlotDuration& duration);

}  // namespace tandem
