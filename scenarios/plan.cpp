#include "scenarios/plan.h"

#include <stdexcept>

#include "scenarios/schedules/schedule.h"

namespace tandem {

StepPlan make_plan(const Scenario& s, const StagePartition* partition) {
  StepPlan plan;
  plan.workload = scenario_workload(s);
  const Schedule schedule = make_schedule(s.schedule.kind, static_cast<int>(s.plan.pp),
                                          static_cast<int>(s.micro_batches()), s.file, "schedule.kind");
  plan.program = build_program(schedule, plan.workload, partition ? *partition : scenario_partition(s, plan.workload),
                               ProgramOptions{s.plan.dp_overlap});
  const std::vector<std::string> problems = check_program(plan.program);
  if (!problems.empty())
    throw std::logic_error("the " + std::string(to_string(s.schedule.kind)) + " program generated for " + s.file +
                           " fails its checks: " + problems.front());
  return plan;
}

}  // namespace tandem
