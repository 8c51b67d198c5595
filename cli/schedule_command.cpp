#include "cli/schedule_command.h"

#include <cstdio>

#include "common/format.h"
#include <fstream>
#include <map>
#include <sstream>

#include "common/signed_index.h"
#include "reports/schedule_svg.h"
#include "scenarios/plan.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"
#include "scenarios/schedules/unit_cost_engine.h"
#include "common/write_file.h"

namespace tandem {

namespace {

UnitCosts parse_unit_costs(const std::string& text) {
  UnitCosts c;
  if (text.empty()) return c;
  std::vector<double> v;
  std::stringstream in(text);
  in.imbue(std::locale::classic());
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      const double x = std::stod(item, &used);
      if (used != item.size() || !(x >= 0) || x > 1e9) throw std::invalid_argument("range");
      v.push_back(x);
    } catch (const std::exception&) {
      throw_input_error("<command line>", "--unit-costs", "expected four numbers >= 0, F,B,W,FB; got '" + text + "'");
    }
  }
  if (v.size() != 4) throw_input_error("<command line>", "--unit-costs", "expected four numbers F,B,W,FB; got '" + text + "'");
  c = UnitCosts{v[0], v[1], v[2], v[3]};
  if (c.W > c.B) throw_input_error("<command line>", "--unit-costs", "W (the weight part of B) cannot exceed B");
  return c;
}

}  // namespace

Result<nlohmann::json> schedule(const ScheduleOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json {
    const UnitCosts costs = parse_unit_costs(o.unit_costs);
    auto loaded = load_scenario(o.path, o.overrides);
    if (!loaded) throw InputException(loaded.error());
    const Scenario& s = loaded.value();
    const StepPlan plan = make_plan(s);
    const Workload& w = plan.workload;
    const StagePartition& part = plan.partition();
    const Schedule& sch = plan.schedule();
    const Program& prog = plan.program;
    const UnitCostRun run = run_unit_costs(sch, costs);

    t += strprintf("Schedule %s: %d pipeline ranks, %d stages, %d micro-batches per step (%d per path)\n",
             to_string(sch.kind), sch.ranks, sch.stages, sch.micro_batches, sch.per_path());
    t += strprintf("Stage partition (%zu stages)\n", part.stages.size());
    t += part.describe(w);
    t += "Per rank: slots (F, B, B* = input-only backward, W, overlapped F&B), tasks, unit-cost bubble\n";
    t += strprintf("  unit costs F=%g B=%g W=%g F&B=%g; step time %g\n", costs.F, costs.B, costs.W, costs.FB, run.step_time);
    t += strprintf("  %4s %-7s %4s %4s %4s %4s %5s %7s %8s %8s %6s\n", "rank", "stages", "F", "B", "B*", "W", "F&B",
             "tasks", "busy", "bubble", "peak");
    nlohmann::json ranks = nlohmann::json::array();
    for (int r = 0; r < sch.ranks; ++r) {
      const SlotCounts n = count_slots(sch.slots[idx(r)]);
      std::string st;
      for (int x : prog.rank_stages[idx(r)]) st += (st.empty() ? "" : ",") + std::to_string(x);
      const size_t ntasks = prog.tasks[idx(r)].size();
      t += strprintf("  %4d %-7s %4d %4d %4d %4d %5d %7zu %8g %8g %6d\n", r, st.c_str(), n.lone_forwards,
               n.lone_backwards - n.deferred, n.deferred, n.weights, n.overlapped, ntasks,
               run.busy[idx(r)], run.bubble[idx(r)],
               run.peak_activations[idx(r)]);
      std::map<std::string, int> by_kind;
      for (const Task& task : prog.tasks[idx(r)]) ++by_kind[to_string(task.kind)];
      ranks.push_back({{"rank", r}, {"stages", prog.rank_stages[idx(r)]},
                       {"forwards", n.forwards}, {"backwards", n.backwards}, {"deferred_backwards", n.deferred},
                       {"weights", n.weights}, {"overlapped", n.overlapped}, {"tasks", ntasks},
                       {"tasks_by_kind", by_kind}, {"op_list", sch.op_list(r)}});
    }
    t += "  (bubble = step time - busy time of the rank; peak = micro-batch chunks alive at once)\n";
    if (!o.svg.empty()) {
      std::string why;
      if (!write_file(o.svg,
                      schedule_svg(sch, run, costs,
                                   strprintf("%s, %d ranks, %d micro-batches (%s)", to_string(sch.kind), sch.ranks,
                                             sch.micro_batches, s.name.c_str())),
                      &why))
        throw_input_error("<command line>", "--svg", "cannot write '" + o.svg + "': " + why);
      t += "  timeline written to " + o.svg + "\n";
    }
    nlohmann::json j;
    j["scenario"] = s.name;
    j["schedule"] = to_string(sch.kind);
    j["ranks"] = sch.ranks;
    j["stages"] = sch.stages;
    j["micro_batches"] = sch.micro_batches;
    j["unit_costs"] = {{"F", costs.F}, {"B", costs.B}, {"W", costs.W}, {"FB", costs.FB}};
    j["step_time"] = run.step_time;
    j["bubble_per_rank"] = run.bubble;
    j["busy_per_rank"] = run.busy;
    j["peak_activations_per_rank"] = run.peak_activations;
    j["per_rank"] = ranks;
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& st : part.stages)
      stages.push_back({{"first_block", st.first_block}, {"end_block", st.end_block}, {"layers", st.layers}});
    j["stage_partition"] = stages;
    return j;
  });
}

}  // namespace tandem
