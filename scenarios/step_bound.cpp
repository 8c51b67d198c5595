#include "scenarios/step_bound.h"

#include <algorithm>

#include "common/signed_index.h"
#include "scenarios/program_timeline.h"
#include "scenarios/task_cost.h"
#include "scenarios/task_work.h"

namespace tandem {

StepBound step_lower_bound(const Scenario& s, const Workload& w, const Program& p) {
  const ComputeCostModel costs(s.cluster.gpu, scenario_calibration(s));
  const bool balanced = s.routing.model == RoutingModel::balanced;
  std::vector<std::vector<double>> secs(p.tasks.size());
  StepBound b;
  for (size_t r = 0; r < p.tasks.size(); ++r) {
    double compute = 0;
    for (const Task& t : p.tasks[r]) {
      const TaskCost c = task_cost(s, p, static_cast<int>(r), t, task_work(s, w, p, static_cast<int>(r), t), costs);
      const double v = std::max(0.0, balanced || t.stream != Stream::compute ? c.seconds : c.seconds - c.routed_seconds);
      secs[r].push_back(v);
      if (t.stream == Stream::compute) compute += v;
    }
    b.compute_s = std::max(b.compute_s, compute);
  }
  TaskTimes times;
  times.duration = [&](int r, int i) { return secs[idx(r)][idx(i)]; };
  times.transfer = [](int, int) { return 0.0; };
  const ProgramTimeline run = play_program(p, times);
  b.step_s = run.finished ? std::max(run.step_time, b.compute_s) : b.compute_s;
  return b;
}

}  // namespace tandem
