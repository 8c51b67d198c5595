// Schedules: generated slot lists against the reference (deepseek-v3.md §4.2, §4.4, §4.7, §15),
// the unit-cost bubble formulas, and the Program's static checks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <set>
#include <stdexcept>

#include "common/signed_index.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"
#include "scenarios/schedules/schedule.h"
#include "scenarios/schedules/schedule_table.h"
#include "scenarios/schedules/unit_cost_engine.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

// The table's bubble for S stages (DualPipeV: S = 2 x ranks).
double table_bubble(ScheduleKind k, double S, const UnitCosts& c) {
  switch (k) {
    case ScheduleKind::one_f_one_b: return (S - 1) * (c.F + c.B);
    case ScheduleKind::zb1p: return (S - 1) * (c.F + c.B - 2 * c.W);
    case ScheduleKind::dualpipe:
    case ScheduleKind::dualpipev: return (S / 2 - 1) * (c.FB + c.B - 3 * c.W);
  }
  throw std::invalid_argument("no bubble formula for this schedule");
}

}  // namespace

TEST_CASE("DualPipe PP=4 with 8 micro-batches is the reference's op list", "[schedule]") {
  const Schedule s = make_schedule(ScheduleKind::dualpipe, 4, 8);
  CHECK(s.op_list(0) == "F0 F0 F0 F1 B1* W F1 (F0&B1) (F1&B0) B1 (F1&B0) B1 B0* W B0* W");
  CHECK(s.op_list(1) == "F0 F1 F0 F1 F0 B1 (F1&B0) (F0&B1) (F1&B0) B1 B0 B1* B0* W W");
  CHECK(s.op_list(2) == s.op_list(1));  // mirror
  CHECK(s.op_list(3) == s.op_list(0));
  // PP=8, 20 micro-batches, rank 0. The reference's example line shows eight F0 first, but its
  // own step table gives 2(H-h-1) + 1 = 7 (= PP - 1 warm-up forwards, as the PP=4 example and
  // Figure 5 have): we follow the table.
  const Schedule s8 = make_schedule(ScheduleKind::dualpipe, 8, 20);
  CHECK(s8.op_list(0).rfind("F0 F0 F0 F0 F0 F0 F0 F1 B1* W F1 B1* W F1 B1* W F1 (F0&B1) (F1&B0)", 0) == 0);
}

TEST_CASE("DualPipeV runs DualPipe's first half on 2N ranks", "[schedule]") {
  const Schedule v = make_schedule(ScheduleKind::dualpipev, 4, 12);
  const Schedule d = make_schedule(ScheduleKind::dualpipe, 8, 24);
  for (int r = 0; r < 4; ++r) CHECK(v.op_list(r) == d.op_list(r));
  CHECK(v.stages == 8);
  // Rank r holds stages r and 2N-1-r; the turn happens inside rank N-1.
  CHECK(v.rank_of(0, 3) == 3);
  CHECK(v.rank_of(0, 4) == 3);
  CHECK(v.rank_of(0, 7) == 0);
}

TEST_CASE("per-rank counts equal the reference formulas (PP16, 120 micro-batches)", "[schedule]") {
  const Schedule s = make_schedule(ScheduleKind::dualpipe, 16, 120);
  for (int r = 0; r < 16; ++r) {
    const SlotCounts n = count_slots(s.slots[idx(r)]);
    const int h = std::min(r, 15 - r);
    CHECK(n.forwards == 120);
    CHECK(n.backwards == 120);
    CHECK(n.weights == 2 * (8 - h - 1) + (h + 1));
    CHECK(n.deferred == n.weights);
  }
  // §15: overlapped slots 97 (edge ranks) ... 103 (middle ranks); lone F 23 ... 17; W 15 ... 8.
  CHECK(count_slots(s.slots[0]).overlapped == 97);
  CHECK(count_slots(s.slots[7]).overlapped == 103);
  CHECK(count_slots(s.slots[0]).lone_forwards == 23);
  CHECK(count_slots(s.slots[7]).lone_forwards == 17);
  CHECK(count_slots(s.slots[0]).weights == 15);
  CHECK(count_slots(s.slots[7]).weights == 8);
}

TEST_CASE("unit-cost bubbles equal the table formulas and do not grow with micro-batches", "[schedule]") {
  const std::vector<UnitCosts> costs = {{1, 2, 1, 3}, {1, 2, 1, 2.5}, {1.5, 3, 1.5, 4}, {2, 4, 2, 5.5}};
  for (ScheduleKind k : kScheduleKinds) {
    for (int pp : {4, 8, 16}) {
      for (int mult : {2, 3, 4, 8}) {
        const int C = mult * pp + (schedule_traits(k).rules.even_micro_batches ? 0 : 2);
        const Schedule s = make_schedule(k, pp, C);
        for (const UnitCosts& c : costs) {
          const UnitCostRun run = run_unit_costs(s, c);
          INFO(to_string(k) << " pp " << pp << " C " << C << " F " << c.F << " B " << c.B << " W " << c.W
                            << " FB " << c.FB);
          REQUIRE(run.finished);
          const double want = table_bubble(k, s.stages, c);
          CHECK(run.max_bubble() == Approx(want).margin(1e-9));
          if (k == ScheduleKind::one_f_one_b || k == ScheduleKind::zb1p)
            for (double b : run.bubble) CHECK(b == Approx(want).margin(1e-9));  // every rank
        }
      }
    }
  }
}

TEST_CASE("reference cross-check: PP16 DualPipe idles 14.0 (F&B=3) and 10.5 (F&B=2.5)", "[schedule]") {
  for (int C : {32, 64, 128}) {
    const Schedule s = make_schedule(ScheduleKind::dualpipe, 16, C);
    CHECK(run_unit_costs(s, {1, 2, 1, 3}).max_bubble() == Approx(14.0));
    CHECK(run_unit_costs(s, {1, 2, 1, 2.5}).max_bubble() == Approx(10.5));
    // With W != B/2 the bubble falls slightly below the formula (reference §4.7: 23.5 vs 24.5).
    CHECK(run_unit_costs(s, {1, 2, 0.5, 3}).max_bubble() == Approx(23.5));
  }
}

TEST_CASE("peak activations: PP for 1F1B, PP+1 for DualPipe", "[schedule]") {
  for (int pp : {4, 8, 16}) {
    const UnitCostRun f = run_unit_costs(make_schedule(ScheduleKind::one_f_one_b, pp, 3 * pp), {});
    CHECK(f.peak_activations[0] == pp);
    CHECK(f.peak_activations[idx(pp - 1)] == 1);
    const UnitCostRun d = run_unit_costs(make_schedule(ScheduleKind::dualpipe, pp, 4 * pp), {});
    for (int p : d.peak_activations) CHECK(p == pp + 1);
    const UnitCostRun v = run_unit_costs(make_schedule(ScheduleKind::dualpipev, pp, 4 * pp), {});
    CHECK(*std::max_element(v.peak_activations.begin(), v.peak_activations.end()) == 2 * pp + 1);
  }
}

TEST_CASE("schedule rules are checked with the scenario key", "[schedule]") {
  auto err = [](ScheduleKind k, int pp, int C) {
    try {
      make_schedule(k, pp, C, "s.yaml", "schedule.kind");
    } catch (const InputException& e) {
      return e.error();
    }
    FAIL("no error");
    return InputError{};
  };
  CHECK(err(ScheduleKind::dualpipe, 5, 20).key == "plan.pp");
  CHECK(err(ScheduleKind::dualpipe, 4, 7).key == "schedule.kind");
  CHECK(err(ScheduleKind::dualpipe, 4, 6).reason.find(">= 2 x") != std::string::npos);
  CHECK(err(ScheduleKind::dualpipev, 4, 7).reason.find("DualPipeV") != std::string::npos);
  CHECK(err(ScheduleKind::one_f_one_b, 8, 4).file == "s.yaml");
}

TEST_CASE("every shipped scenario's program passes the static checks", "[schedule]") {
  for (const char* name : {"deepseek-v3-2048", "deepseek-v3-1f1b", "deepseek-v2-1024", "tiny-dualpipe",
                           "tiny-1f1b", "tiny-dualpipev"}) {
    auto r = load_scenario(repo(std::string("scenarios/") + name + ".yaml"));
    REQUIRE(r.ok());
    const Scenario& s = r.value();
    const Workload w = scenario_workload(s);
    const StagePartition p = partition_stages(w, s.stages(), {}, s.file, "plan.pp");
    const Program prog = build_program(
        make_schedule(s.schedule.kind, static_cast<int>(s.plan.pp), static_cast<int>(s.micro_batches())), w, p);
    const auto problems = check_program(prog);
    INFO(name << ": " << (problems.empty() ? "" : problems.front()));
    CHECK(problems.empty());
  }
  // All four generators on the tiny model, including ZB1P.
  auto r = load_scenario(repo("scenarios/tiny-1f1b.yaml"), {"schedule.kind=zb1p"});
  REQUIRE(r.ok());
  const Workload w = scenario_workload(r.value());
  const StagePartition p = partition_stages(w, 4, {}, "", "");
  CHECK(check_program(build_program(make_schedule(ScheduleKind::zb1p, 4, 8), w, p)).empty());
}

TEST_CASE("an overlapped slot interleaves its chunks in the report's order", "[schedule]") {
  auto r = load_scenario(repo("scenarios/tiny-dualpipe.yaml"));
  REQUIRE(r.ok());
  const Workload w = scenario_workload(r.value());
  const StagePartition p = partition_stages(w, 4, {}, "", "");
  const Schedule s = make_schedule(ScheduleKind::dualpipe, 4, 8);
  const Program prog = build_program(s, w, p);
  // Rank 1's slot 6 is (F1&B0); find its first MoE step and check the per-layer order.
  std::vector<TaskKind> seq;
  for (const Task& t : prog.tasks[1])
    if (t.slot == 6 && t.kind != TaskKind::pp_recv && t.kind != TaskKind::pp_send) seq.push_back(t.kind);
  REQUIRE(seq.size() >= 10);
  const std::vector<TaskKind> want = {TaskKind::combine_b, TaskKind::attn_f,     TaskKind::mlp_b,
                                      TaskKind::dispatch_f, TaskKind::dispatch_b, TaskKind::mlp_w,
                                      TaskKind::mlp_f,     TaskKind::attn_b,     TaskKind::attn_w,
                                      TaskKind::combine_f};
  CHECK(std::vector<TaskKind>(seq.begin(), seq.begin() + 10) == want);
  // Streams: all-to-all and pipeline transfers on comm, the rest on compute.
  for (const Task& t : prog.tasks[1]) {
    const bool comm = t.kind == TaskKind::dispatch_f || t.kind == TaskKind::combine_b ||
                      t.kind == TaskKind::dispatch_b || t.kind == TaskKind::combine_f ||
                      t.kind == TaskKind::pp_send || t.kind == TaskKind::pp_recv ||
                      t.kind == TaskKind::dp_all_gather || t.kind == TaskKind::dp_reduce_scatter;
    CHECK((t.stream == Stream::comm) == comm);
    for (int d : t.deps) CHECK(d < static_cast<int>(&t - prog.tasks[1].data()));
  }
}

// plan.dp_overlap: one reduce-scatter per stage the rank holds, after that stage's last weight
// pass and before the rank's remaining compute; the optimizer waits for all of them.
TEST_CASE("dp_overlap reduces each stage's gradients after its last weight pass", "[schedule]") {
  for (const char* name : {"tiny-dualpipe", "tiny-1f1b", "tiny-dualpipev"}) {
    auto r = load_scenario(repo(std::string("scenarios/") + name + ".yaml"), {"plan.dp_overlap=true"});
    REQUIRE(r.ok());
    const Scenario& s = r.value();
    CHECK(s.plan.dp_overlap);
    const Workload w = scenario_workload(s);
    const StagePartition p = partition_stages(w, s.stages(), {}, s.file, "plan.pp");
    const Program prog = build_program(
        make_schedule(s.schedule.kind, static_cast<int>(s.plan.pp), static_cast<int>(s.micro_batches())), w, p,
        ProgramOptions{true});
    INFO(name);
    CHECK(check_program(prog).empty());
    for (size_t rank = 0; rank < prog.tasks.size(); ++rank) {
      const auto& tasks = prog.tasks[rank];
      std::set<int> reduced;
      int optimizer = -1;
      for (size_t i = 0; i < tasks.size(); ++i) {
        const Task& t = tasks[i];
        if (t.kind == TaskKind::optimizer) optimizer = static_cast<int>(i);
        if (t.kind != TaskKind::dp_reduce_scatter) continue;
        CHECK(t.chunk.stage >= 0);
        reduced.insert(t.chunk.stage);
        // Every weight pass of that stage comes before it.
        for (size_t j = i + 1; j < tasks.size(); ++j)
          CHECK_FALSE(((tasks[j].kind == TaskKind::attn_w || tasks[j].kind == TaskKind::mlp_w) &&
                       tasks[j].chunk.stage == t.chunk.stage));
      }
      const auto& held = prog.rank_stages[rank];
      CHECK(reduced == std::set<int>(held.begin(), held.end()));
      REQUIRE(optimizer >= 0);
      for (size_t i = 0; i < tasks.size(); ++i)
        if (tasks[i].kind == TaskKind::dp_reduce_scatter)
          CHECK(std::count(tasks[idx(optimizer)].deps.begin(), tasks[idx(optimizer)].deps.end(),
                           static_cast<int>(i)) == 1);
    }
  }
}
