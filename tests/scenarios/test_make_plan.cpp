// make_plan (scenarios/plan.h): one scenario → Program chain for both engines and the CLI.
#include <catch2/catch.hpp>

#include "exec/runtime/run_spec.h"
#include "scenarios/plan.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

Scenario load(const std::string& file, const std::vector<std::string>& sets = {}) {
  auto s = load_scenario(repo(file), sets);
  REQUIRE(s.ok());
  return s.value();
}

}  // namespace

TEST_CASE("make_plan: a checked program of the scenario's schedule, the same every time", "[scenario]") {
  for (const char* file : {"scenarios/tiny-dualpipe.yaml", "scenarios/tiny-1f1b.yaml", "scenarios/tiny-dualpipev.yaml",
                           "scenarios/deepseek-v3-2048.yaml"}) {
    CAPTURE(file);
    const Scenario s = load(file);
    const StepPlan plan = make_plan(s);
    CHECK(check_program(plan.program).empty());
    CHECK(plan.schedule().kind == s.schedule.kind);
    CHECK(plan.schedule().ranks == s.plan.pp);
    CHECK(plan.schedule().micro_batches == s.micro_batches());
    CHECK(std::ssize(plan.partition().stages) == plan.schedule().stages);
    CHECK(plan.workload.blocks.size() == scenario_workload(s).blocks.size());
    CHECK(program_digest(make_plan(s).program) == program_digest(plan.program));
  }
}

TEST_CASE("make_plan: the executor runs the plan the simulator runs", "[scenario]") {
  for (const char* file : {"scenarios/tiny-dualpipe.yaml", "scenarios/tiny-1f1b.yaml", "scenarios/tiny-dualpipev.yaml"}) {
    CAPTURE(file);
    const Scenario s = load(file);
    const runtime::RunSpec spec = runtime::make_run_spec(s, nn::Numerics::exact, 1e-3, 1);
    CHECK(program_digest(spec.program) == program_digest(make_plan(s).program));
  }
  // Every option of the chain comes from the scenario (the executor refuses dp_overlap; the
  // simulator's program changes with it).
  const Scenario off = load("scenarios/tiny-dualpipe.yaml", {"plan.dp_overlap=false"});
  const Scenario on = load("scenarios/tiny-dualpipe.yaml", {"plan.dp_overlap=true"});
  CHECK(program_digest(make_plan(off).program) != program_digest(make_plan(on).program));
}

TEST_CASE("make_plan: a partition the caller gives is used as given", "[scenario]") {
  const Scenario s = load("scenarios/deepseek-v3-2048.yaml");
  const StepPlan balanced = make_plan(s);
  // Move one block from the first stage to the second: not what the balancer chose.
  StagePartition moved = balanced.partition();
  REQUIRE(moved.stages.size() >= 2);
  REQUIRE(moved.stages[0].end_block - moved.stages[0].first_block >= 2);
  --moved.stages[0].end_block;
  --moved.stages[1].first_block;
  const StepPlan given = make_plan(s, &moved);
  CHECK(given.partition().stages[0].end_block == balanced.partition().stages[0].end_block - 1);
  CHECK(given.partition().stages[1].first_block == balanced.partition().stages[1].first_block - 1);
  CHECK(program_digest(given.program) != program_digest(balanced.program));
}
