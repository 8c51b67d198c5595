#include "scenarios/plan.h"

#include <stdexcept>

namespace tandem {

StepPlan make_plan(const Scenario& s, const StagePartition* partition) {
  StepPlan plan;
  plan.workload = scenario_workload(s);
  plan.program = scenario_program(s, plan.workload, partition ? *partition : scenario_partition(s, plan.workload));
  const std::vector<std::string> problems = check_program(plan.program);
  if (!problems.empty())
    throw std::logic_error("the " + std::string(to_string(s.schedule.kind)) + " program generated for " + s.file +
                           " fails its checks: " + problems.front());
  return plan;
}

}  // namespace tandem
