// The executor on the tiny model: every schedule bit-identical to the sequential reference,
// training lowers the loss, failures stop the job naming the rank, the budget and the trace.
#include <fstream>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "exec/runtime/budget.h"
#include "exec/runtime/executor.h"

using namespace tandem;
using namespace tandem::runtime;

namespace {

// The tiny scenarios, shrunk so the whole [runtime] run stays within minutes on 2 cores.
RunSpec tiny(const std::string& file, std::vector<std::string> extra = {}) {
  std::vector<std::string> o{"model.num_nextn_predict_layers=0", "batch.seq_len=32"};
  o.insert(o.end(), extra.begin(), extra.end());
  auto s = load_scenario(std::string(TANDEM_SOURCE_DIR) + "/scenarios/" + file, o);
  if (!s) FAIL(s.error().message());
  return make_run_spec(s.value(), nn::Numerics::exact, 1e-3, 1);
}

}  // namespace

TEST_CASE("every schedule is bit-identical to the sequential reference", "[runtime]") {
  struct Case {
    const char* file;
    std::vector<std::string> extra;
  };
  const std::vector<Case> cases{
      {"tiny-1f1b.yaml", {"model.num_hidden_layers=4", "batch.global_sequences=16"}},
      {"tiny-1f1b.yaml", {"model.num_hidden_layers=4", "batch.global_sequences=16", "schedule.kind=zb1p"}},
      {"tiny-dualpipe.yaml", {"model.num_hidden_layers=4"}},
      {"tiny-dualpipev.yaml", {"model.num_hidden_layers=4"}},
  };
  for (const auto& c : cases) {
    const RunSpec spec = tiny(c.file, c.extra);
    INFO(c.file << " " << to_string(spec.scenario.schedule.kind));
    ExecOptions o;
    o.check_reference = true;
    const ExecResult r = execute(spec, o);
    REQUIRE(r.max_grad_rel_err.has_value());
    CHECK(*r.max_grad_rel_err == 0.0);
    CHECK(r.losses_match.value_or(false));
  }
}

TEST_CASE("the loss falls over 20 steps", "[runtime]") {
  const RunSpec spec = tiny("tiny-dualpipev.yaml", {"model.num_hidden_layers=3", "batch.seq_len=16"});
  RunSpec fast = spec;
  fast.adam.lr = 1e-2;
  ExecOptions o;
  o.steps = 20;
  const ExecResult r = execute(fast, o);
  REQUIRE(r.steps.size() == 20);
  CHECK(r.steps.back().loss < 0.8 * r.steps.front().loss);
}

TEST_CASE("a failing rank stops the job, naming the rank, without hanging", "[runtime]") {
  const RunSpec spec = tiny("tiny-dualpipe.yaml", {"model.num_hidden_layers=4"});
  ExecOptions o;
  o.timeout = std::chrono::milliseconds(10'000);
  o.fault = comm::FaultInjection{3, 4, comm::FaultInjection::Mode::announced};
  try {
    execute(spec, o);
    FAIL("no failure");
  } catch (const ExecFailure& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("rank 3") != std::string::npos);
  }
}

TEST_CASE("a scenario too large for the CPU backend names the key", "[runtime]") {
  auto s = load_scenario(std::string(TANDEM_SOURCE_DIR) + "/scenarios/deepseek-v3-1f1b.yaml");
  REQUIRE(s);
  try {
    check_cpu_budget(s.value(), scenario_workload(s.value()));
    FAIL("accepted");
  } catch (const InputException& e) {
    CHECK((e.error().key == "model" || e.error().key == "batch.global_sequences"));
  }
  auto big = load_scenario(std::string(TANDEM_SOURCE_DIR) + "/scenarios/tiny-1f1b.yaml", {"batch.global_sequences=4096"});
  REQUIRE(big);
  try {
    check_cpu_budget(big.value(), scenario_workload(big.value()));
    FAIL("accepted");
  } catch (const InputException& e) {
    CHECK(e.error().key == "batch.global_sequences");
  }
}

TEST_CASE("the trace is valid Perfetto JSON with every task", "[runtime]") {
  const RunSpec spec = tiny("tiny-dualpipev.yaml", {"model.num_hidden_layers=3", "batch.seq_len=16"});
  ExecOptions o;
  o.trace = true;
  const ExecResult r = execute(spec, o);
  size_t tasks = 0;
  for (const auto& t : spec.program.tasks) tasks += t.size();
  CHECK(r.trace.events.size() == tasks * static_cast<size_t>(spec.dp));
  const std::string path = "runtime_trace_test.json";
  REQUIRE(r.trace.write_perfetto(path));
  std::ifstream in(path);
  const auto j = nlohmann::json::parse(in);
  CHECK(j.contains("traceEvents"));
  CHECK(!j["traceEvents"].empty());
}
