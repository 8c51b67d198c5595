// make_plan: the scenario → Program chain, in one place. Both engines (sim/engine.cpp,
// exec/runtime/run_spec.cpp) and every command that needs the per-rank program (schedule, plan)
// get it here, so they cannot drift apart on a step of the chain.
//
// The chain: the workload of one micro-batch (scenario_workload), the stage partition (the
// manual schedule.stage_layers or the balancer's, scenario_partition), the schedule generated for
// schedule.kind on plan.pp ranks and the scenario's micro-batches, and the Program built from
// them with plan.dp_overlap (build_program), then checked (check_program: messages paired, every
// chunk's passes in order, per-rank counts equal to the formulas, a dependency-driven run
// finishes).
//
// Contract: the same scenario gives the same plan. A Program that fails its checks is a bug in a
// generator, not bad input: make_plan throws std::logic_error naming the first problem.
#pragma once

#include "models/workload.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"

namespace tandem {

struct StepPlan {
  Workload workload;
  Program program;  // with its schedule (program.schedule) and partition (program.partition)

  const Schedule& schedule() const { return program.schedule; }
  const StagePartition& partition() const { return program.partition; }
};

// `partition`: the caller's, when it has one already (load_scenario's, a plan search's
// candidate); used as given, not balanced again. Null: the scenario's (scenario_partition).
StepPlan make_plan(const Scenario& s, const StagePartition* partition = nullptr);

}  // namespace tandem
