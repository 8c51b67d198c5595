// StepBound: a lower bound on the step time every simulator tier predicts for a scenario, in
// milliseconds of CPU instead of a simulation — what `tandem plan` prunes candidate plans with.
//
// The scenario's Program is played (scenarios/program_timeline.h, the engines' semantics: each
// rank's compute and comm streams in Program order, dependencies respected) with every task
// costing what the simulator charges it before the network has its say (scenarios/task_cost.h):
// compute tasks their calibrated seconds, comm tasks the kernels they run before their transfer;
// every transfer (all-to-all, pipeline, data-parallel) takes no time. The engines add transfer
// time and never shorten a task, and a program with fixed stream orders cannot finish earlier
// when a task takes longer, so the bound is at most the simulated step.
//
// Skewed routing: a GPU's routed expert work scales with its load factor, which can be below 1,
// so the bound then leaves the routed part out (still a bound, a looser one).
#pragma once

#include "scenarios/program.h"
#include "scenarios/scenario.h"

namespace tandem {

struct StepBound {
  double step_s = 0;     // the bound on the step
  double compute_s = 0;  // the busiest rank's compute-stream seconds (the bound without the schedule)
};

StepBound step_lower_bound(const Scenario& s, const Workload& w, const Program& p);

}  // namespace tandem
