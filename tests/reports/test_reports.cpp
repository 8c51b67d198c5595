// reports/: the per-GPU accounting, the step metrics from a trace, and `tandem compare`.
#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/gpu_time.h"
#include "common/subprocess.h"
#include "common/trace.h"
#include "reports/step_metrics.h"
#include "reports/trace_compare.h"
#include "scenarios/plan.h"
#include "scenarios/scenario.h"
#include "tests/temp_dir.h"
#include "tests/test_paths.h"

using namespace tandem;
using nlohmann::json;

namespace {

std::string tandem_cmd(const std::string& args) { return std::string(TANDEM_BINARY) + " " + args; }

bool close(double a, double b) { return std::abs(a - b) <= 1e-12 * std::max({1.0, std::abs(a), std::abs(b)}) || std::abs(a - b) < 1e-15; }

}  // namespace

// GpuTime folds exposed communication while the streams report (it keeps only the intervals it
// still needs): random streams, reported interleaved as two engines would, against a direct
// sweep over every interval once both streams are complete.
TEST_CASE("GpuTime's running fold of exposed communication equals a sweep of the whole step", "[reports]") {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> len(0.1, 3.0), gap(0.0, 2.0);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<std::pair<double, double>> compute, comm;
    for (double t = gap(rng); compute.size() < 40; t += gap(rng)) {
      const double e = t + len(rng);
      compute.push_back({t, e});
      t = e;
    }
    for (double t = gap(rng); comm.size() < 40; t += gap(rng) * 1.5) {
      const double e = t + len(rng);
      comm.push_back({t, e});
      t = e;
    }
    // Reported as they end, the streams interleaved (ties: either first).
    GpuTime g(0, 0);
    size_t c = 0, m = 0;
    while (c < compute.size() || m < comm.size()) {
      const bool take_compute = m == comm.size() || (c < compute.size() && (compute[c].second < comm[m].second ||
                                                                             (compute[c].second == comm[m].second && rng() % 2)));
      if (take_compute) g.add(true, "mlp_f", SlotClass::f, compute[c].first, compute[c].second), ++c;
      else g.add(false, "dispatch_f", SlotClass::f, comm[m].first, comm[m].second), ++m;
    }
    g.seal();
    double exposed = 0;
    for (const auto& [b, e] : comm) {
      double covered = 0;
      for (const auto& [cb, ce] : compute) covered += std::max(0.0, std::min(e, ce) - std::max(b, cb));
      exposed += (e - b) - covered;
    }
    INFO("trial " << trial);
    CHECK(g.exposed_comm() == Approx(exposed).margin(1e-9));
  }
}

TEST_CASE("GpuTime splits a GPU's step into slot compute, exposed comm and bubble", "[reports]") {
  GpuTime g(3, 1);
  // compute: F 0-2, F&B 3-6; comm: 1-4 (2-3 uncovered: 1 s exposed), 7-8 (exposed).
  g.add(true, "attn_f", SlotClass::f, 0, 2);
  g.add(false, "dispatch_f", SlotClass::f, 1, 4);
  g.add(true, "mlp_b", SlotClass::fb, 3, 6);
  g.add(false, "dp_all_gather", SlotClass::end_of_step, 7, 8);
  g.seal();
  CHECK(g.compute_busy() == 5);
  CHECK(g.compute_in(SlotClass::f) == 2);
  CHECK(g.compute_in(SlotClass::fb) == 3);
  CHECK(g.exposed_comm() == 2);
  CHECK(g.end() == 8);
  CHECK(g.seconds_by_kind().at("dispatch_f") == 3);

  const StepTimes t = step_times({g}, 10);
  CHECK(t.split.exposed_comm == 2);
  CHECK(t.split.bubble == 3);  // 10 - 5 compute - 2 exposed
  REQUIRE(t.ranks.size() == 1);
  CHECK(t.ranks[0].rank == 1);
  double sum = t.split.exposed_comm + t.split.bubble;
  for (double c : t.split.compute_by_slot) sum += c;
  CHECK(sum == 10);
}

TEST_CASE("Metrics from a trace file equal simulate's own on the default scenario", "[reports]") {
  test::TempDir dir;
  const std::string trace = dir.file("v3.trace.json");
  const auto run = run_process(tandem_cmd("simulate " + test::repo("scenarios/deepseek-v3-2048.yaml") + " --json --trace " + trace));
  REQUIRE(run.code == 0);
  const json sim = json::parse(run.out);

  // The trace, read back and accounted by the report library.
  auto t = read_trace(trace);
  REQUIRE(t);
  auto s = load_scenario(test::repo("scenarios/deepseek-v3-2048.yaml"));
  REQUIRE(s);
  const Program prog = make_plan(s.value()).program;
  CHECK(t.value().program == program_digest(prog));
  const StepTimes times = step_times(account_trace(t.value(), prog));
  CHECK(times.gpus == 16);
  CHECK(close(times.step_time_s, sim["step_time_s"].get<double>()));
  CHECK(close(times.split.compute_busy / times.step_time_s, sim["compute_busy_fraction"].get<double>()));
  CHECK(close(times.split.bubble / times.step_time_s, sim["bubble_fraction"].get<double>()));
  CHECK(close(times.split.exposed_comm / times.step_time_s, sim["exposed_comm_fraction"].get<double>()));
  for (const auto& [kind, secs] : times.seconds_by_kind) CHECK(close(secs, sim["seconds_by_kind"][kind].get<double>()));
  for (size_t r = 0; r < times.ranks.size(); ++r)
    CHECK(close(times.ranks[r].split.compute_busy, sim["rank_compute_busy_s"][r].get<double>()));

  // No number moved when the metrics moved into reports/: the committed prediction (written by the
  // code before) is what simulate prints now, but for the wall time.
  std::ifstream committed(test::repo("reports/predictions/deepseek-v3-2048.json"));
  const json before = json::parse(committed);
  for (const char* key : {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "mfu_noncausal", "compute_busy_fraction",
                          "bubble_fraction", "exposed_comm_fraction", "memory_peak_bytes", "gpu_hours_per_trillion_tokens",
                          "days_for_training_tokens", "cost_usd_for_training_tokens"}) {
    INFO(key);
    CHECK(close(before[key].get<double>(), sim[key].get<double>()));
  }
  for (const auto& [kind, secs] : before["seconds_by_kind"].items()) {
    INFO(kind);
    CHECK(close(secs.get<double>(), sim["seconds_by_kind"][kind].get<double>()));
  }
}

TEST_CASE("compare aligns every task of a CPU execution with its simulation", "[reports]") {
  test::TempDir dir;
  const std::string scenario = test::repo("scenarios/tiny-dualpipe.yaml");
  const std::string sim = dir.file("sim.json"), exec = dir.file("exec.json");
  REQUIRE(run_process(tandem_cmd("simulate " + scenario + " --trace " + sim)).code == 0);
  REQUIRE(run_process(tandem_cmd("execute " + scenario + " --trace " + exec)).code == 0);
  const auto run = run_process(tandem_cmd("compare " + sim + " " + exec + " --json --top 5"));
  REQUIRE(run.code == 0);
  const json c = json::parse(run.out);

  auto s = load_scenario(scenario);
  REQUIRE(s);
  const Program prog = make_plan(s.value()).program;
  size_t tasks = 0;
  for (const auto& rank : prog.tasks) tasks += rank.size();
  CHECK(c["aligned_tasks"].get<size_t>() == tasks);  // every task of every rank, once
  CHECK(c["only_in_a"].empty());
  CHECK(c["only_in_b"].empty());
  CHECK(c["ranks"].size() == prog.tasks.size());
  CHECK(c["most_different"].size() == 5);
  int kinds_with_ratio = 0, aligned_by_kind = 0;
  for (const auto& k : c["kinds"]) {
    aligned_by_kind += k["tasks"].get<int>();
    if (!k["ratio"].is_null()) {
      ++kinds_with_ratio;
      CHECK(k["ratio"].get<double>() > 0);
    }
  }
  CHECK(aligned_by_kind == static_cast<int>(tasks));
  CHECK(kinds_with_ratio >= 10);
  CHECK(c["a"]["engine"] == "sim");
  CHECK(c["b"]["engine"] == "exec");
}

TEST_CASE("compare refuses traces of different scenarios or programs in one line", "[reports]") {
  test::TempDir dir;
  const std::string a = dir.file("a.json"), b = dir.file("b.json"), c = dir.file("c.json");
  REQUIRE(run_process(tandem_cmd("simulate " + test::repo("scenarios/tiny-dualpipe.yaml") + " --trace " + a)).code == 0);
  REQUIRE(run_process(tandem_cmd("simulate " + test::repo("scenarios/tiny-1f1b.yaml") + " --trace " + b)).code == 0);
  REQUIRE(run_process(tandem_cmd("simulate " + test::repo("scenarios/tiny-dualpipe.yaml") +
                                 " --set batch.global_sequences=64 --trace " + c)).code == 0);
  auto other_scenario = run_process(tandem_cmd("compare " + a + " " + b + " 2>&1"));
  CHECK(other_scenario.code == 2);
  CHECK(other_scenario.out.find("otherData.scenario") != std::string::npos);
  CHECK(std::count(other_scenario.out.begin(), other_scenario.out.end(), '\n') == 1);
  auto other_program = run_process(tandem_cmd("compare " + a + " " + c + " 2>&1"));
  CHECK(other_program.code == 2);
  CHECK(other_program.out.find("otherData.program") != std::string::npos);
  CHECK(std::count(other_program.out.begin(), other_program.out.end(), '\n') == 1);
  // A profiler trace has no task identities: its shapes must come from --scenario.
  auto profiler = run_process(tandem_cmd("compare " + a + " " + test::repo("tests/data/train-excerpt.json") + " 2>&1"));
  CHECK(profiler.code == 2);
  CHECK(profiler.out.find("--scenario") != std::string::npos);
  // A profiler trace as A is refused: A is a tandem trace.
  auto profiler_a = run_process(tandem_cmd("compare " + test::repo("tests/data/train-excerpt.json") + " " + a + " 2>&1"));
  CHECK(profiler_a.code == 2);
  CHECK(profiler_a.out.find("not a trace tandem wrote") != std::string::npos);
}

TEST_CASE("compare aligns a simulation with a profiler trace by task kind", "[reports]") {
  test::TempDir dir;
  const std::string v3 = test::repo("scenarios/deepseek-v3-2048.yaml"), sim = dir.file("v3.json");
  REQUIRE(run_process(tandem_cmd("simulate " + v3 + " --trace " + sim)).code == 0);
  const auto run = run_process(tandem_cmd("compare " + sim + " " + test::repo("tests/data/train-excerpt.json") +
                                          " --scenario " + v3 + " --json"));
  REQUIRE(run.code == 0);
  const json c = json::parse(run.out);
  CHECK(c["kinds_only"] == true);
  CHECK(c["b"]["engine"] == "profiler");
  REQUIRE(c["kinds"].size() >= 3);  // the excerpt holds attn(F), dispatch(F), mlp(B), attn(B)
  for (const auto& k : c["kinds"]) {
    CHECK(k["a_s"].get<double>() > 0);
    CHECK(k["b_s"].get<double>() > 0);
    CHECK(k["tasks"].get<int>() > 0);
  }
  // The kinds the excerpt does not hold are listed, not dropped.
  CHECK(c["kinds_only_in_a"].size() + c["kinds"].size() >= 10);
  // Another scenario's --scenario is refused.
  auto other = run_process(tandem_cmd("compare " + sim + " " + test::repo("tests/data/train-excerpt.json") + " --scenario " +
                                      test::repo("scenarios/tiny-dualpipe.yaml") + " 2>&1"));
  CHECK(other.code == 2);
  CHECK(other.out.find("otherData.scenario") != std::string::npos);
}
