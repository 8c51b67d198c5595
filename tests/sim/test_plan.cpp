// `tandem plan` and `tandem sweep` end to end, through the tandem binary.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using nlohmann::json;
using tandem::test::repo;

namespace {

tandem::ProcessRun tandem_run(const std::string& args, bool with_stderr = false) {
  return tandem::run_process(std::string(TANDEM_BINARY) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null"));
}

// A small search: 27 candidates of the tiny scenario, some infeasible.
const std::string kSearch =
    " --fix comm.sms=20 --fix plan.dp_overlap=false --fix batch.micro_batch_sequences=2"
    " --vary plan.pp=1,2,4 --vary plan.ep=1,2,4 --vary schedule.kind=1f1b,zb1p,dualpipe";

json plan(const std::string& extra) {
  const auto r = tandem_run("plan " + repo("scenarios/tiny-dualpipe.yaml") + kSearch + " --json " + extra);
  INFO(r.out);
  REQUIRE(r.code == 0);
  return json::parse(r.out);
}

// Fields of one CSV line (RFC 4180 quoting).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> out{""};
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
      out.back() += '"';
      ++i;
    } else if (c == '"') {
      quoted = !quoted;
    } else if (c == ',' && !quoted) {
      out.push_back("");
    } else {
      out.back() += c;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("plan ranks first the plan an exhaustive sweep of the same candidates finds fastest", "[plan]") {
  const json p = plan("-j 1");
  CHECK(p["enumerated"] == 27);
  CHECK(p["infeasible"].get<int>() > 0);
  int by_key = 0;
  for (const auto& [key, v] : p["infeasible_by_key"].items()) by_key += v["count"].get<int>();
  CHECK(by_key == p["infeasible"].get<int>());
  CHECK(p["ranked"].get<int>() + p["infeasible"].get<int>() + p["failed"].get<int>() + p["pruned"].get<int>() == 27);
  REQUIRE(!p["plans"].empty());

  // The same candidates through tandem sweep, every one simulated: the fastest that leaves 5% of
  // HBM free is the plan's winner.
  const auto s = tandem_run("sweep " + repo("scenarios/tiny-dualpipe.yaml") +
                            " --set comm.sms=20 --set plan.dp_overlap=false --set batch.micro_batch_sequences=2"
                            " --vary plan.pp=1,2,4 --vary plan.ep=1,2,4 --vary schedule.kind=1f1b,zb1p,dualpipe --json");
  REQUIRE(s.code == 0);
  double best = INFINITY;
  json best_run;
  const json sweep = json::parse(s.out);
  for (const json& run : sweep["runs"])
    if (run["status"] == "ok" && run["step_time_s"].get<double>() < best) {
      best = run["step_time_s"].get<double>();
      best_run = run;
    }
  const json& winner = p["plans"][0];
  CHECK(winner["step_time_s"].get<double>() == best);
  for (const char* key : {"plan.pp", "plan.ep", "schedule.kind"}) CHECK(winner[key] == best_run[key]);
  // The scenario's own plan (PP4 DualPipe, EP2) is among the candidates and ranked.
  CHECK(p["scenario_plan_rank"].get<int>() >= 1);
}

TEST_CASE("plan prunes only plans whose lower bound cannot enter the table", "[plan]") {
  // Every plan that fits simulated: each one's lower bound is at most its simulated step.
  const json all = plan("--no-prune --top 3");
  CHECK(all["pruned"] == 0);
  REQUIRE(all["plans"].size() > 5);
  for (const json& p : all["plans"]) {
    CHECK(p["step_lower_bound_s"].get<double>() > 0);
    CHECK(p["step_lower_bound_s"].get<double>() <= p["step_time_s"].get<double>());
  }
  // A search that prunes lists the same fastest plans and ranks the scenario's plan the same.
  const json pruned = plan("--top 3");
  CHECK(pruned["ranked"].get<int>() + pruned["pruned"].get<int>() == all["ranked"].get<int>());
  REQUIRE(pruned["plans"].size() >= 3);
  for (size_t i = 0; i < 3; ++i) CHECK(pruned["plans"][i] == all["plans"][i]);
  CHECK(pruned["scenario_plan_rank"] == all["scenario_plan_rank"]);
}

TEST_CASE("plan gives the same ranking whatever the parallelism", "[plan]") {
  const json one = plan("-j 1"), two = plan("-j 2");
  REQUIRE(one["plans"].size() == two["plans"].size());
  for (size_t i = 0; i < one["plans"].size(); ++i) {
    INFO(i);
    CHECK(one["plans"][i] == two["plans"][i]);
  }
}

TEST_CASE("plan --write-best writes a card that simulates to the reported time", "[plan]") {
  tandem::test::TempDir dir;
  const std::string card = dir.file("best.yaml");
  const json p = plan("--write-best " + card);
  const auto r = tandem_run("simulate " + card + " --json");
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(json::parse(r.out)["step_time_s"].get<double>() == p["plans"][0]["step_time_s"].get<double>());
}

TEST_CASE("plan refuses bad options in one line", "[plan]") {
  const std::string base = "plan " + repo("scenarios/tiny-dualpipe.yaml");
  for (const std::string& bad : {std::string(" --vary plan.pp="), std::string(" --vary plan.pp=2,,4"),
                                 std::string(" --fix nosuch.key=1"), std::string(" --memory-headroom 1.5"),
                                 std::string(" --fix plan.pp=2 --vary plan.pp=2,4"), std::string(" --fix plan.pp"),
                                 std::string(" --vary nosuch.key=1,2"), std::string(" --vary plan.pp=one,two"),
                                 std::string(" --gpus 8 --budget-usd -5"), std::string(" --vary plan.pp=[1,2")}) {
    INFO(bad);
    const auto r = tandem_run(base + bad, true);
    CHECK(r.code == 2);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
}

TEST_CASE("sweep refuses what would fail every run, in one line", "[plan]") {
  const std::string tiny = repo("scenarios/tiny-dualpipe.yaml");
  for (const std::string& bad :
       {"sweep " + tiny + " --vary plan.pp=[1,2", "sweep " + tiny + " --vary plan.pp=1],2", std::string("sweep /no/such.yaml --vary plan.pp=1,2"),
        "sweep " + tiny + " --vary plan.pp=1,2 --fidelity exact", "sweep " + tiny + " --vary plan.pp=1,2 --set nosuch.key=1",
        "sweep " + tiny + " --vary plan.pp=one,two"}) {
    INFO(bad);
    const auto r = tandem_run(bad, true);
    CHECK(r.code == 2);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
}

TEST_CASE("sweep -j 2 gives the -j 1 table; its CSV quotes fields and is marked incomplete until done", "[plan]") {
  tandem::test::TempDir dir;
  const std::string args = "sweep " + repo("scenarios/tiny-dualpipe.yaml") + " --vary plan.pp=1,2,4 --vary plan.ep=1,2,8 --json";
  const auto one = tandem_run(args + " -j 1 --csv " + dir.file("one.csv"));
  const auto two = tandem_run(args + " -j 2");
  REQUIRE(one.code == 0);
  REQUIRE(two.code == 0);
  const json runs = json::parse(one.out);
  CHECK(runs["runs"].size() == 9);
  auto strip = [](json j) {
    for (json& r : j["runs"]) r.erase("sim_wall_s");
    j.erase("wall_s");
    return j;
  };
  CHECK(strip(json::parse(one.out)) == strip(json::parse(two.out)));
  // Every row has the header's fields, though rejection reasons hold commas.
  std::ifstream csv(dir.file("one.csv"));
  std::string line;
  std::getline(csv, line);
  const size_t fields = csv_fields(line).size();
  int rows = 0;
  bool comma_in_a_field = false;
  while (std::getline(csv, line)) {
    const auto f = csv_fields(line);
    CHECK(f.size() == fields);
    comma_in_a_field |= std::any_of(f.begin(), f.end(), [](const std::string& x) { return x.find(',') != std::string::npos; });
    ++rows;
  }
  CHECK(rows == 9);
  CHECK(comma_in_a_field);
  CHECK(!std::filesystem::exists(dir.file("one.csv.incomplete")));

  // A sweep stopped midway leaves no file under the CSV's name, only the ".incomplete" one.
  const std::string cut = dir.file("cut.csv");
  tandem::run_process("sh -c '" + std::string(TANDEM_BINARY) + " sweep " + repo("scenarios/deepseek-v3-2048.yaml") +
                      " --vary comm.sms=10,12,14,16,18,20 --csv " + cut + " >/dev/null 2>&1 & p=$!; sleep 1; kill -TERM $p; wait $p' 2>/dev/null");
  CHECK(!std::filesystem::exists(cut));
  CHECK(std::filesystem::exists(cut + ".incomplete"));
}

TEST_CASE("plan --gpus finds the smallest GPU count whose best plan meets the deadline", "[plan]") {
  const std::string base = "plan " + repo("scenarios/tiny-dualpipe.yaml") +
                           " --fix comm.sms=20 --fix plan.dp_overlap=false --fix batch.micro_batch_sequences=2 -j 2 --json";
  // No deadline is too loose to need more than the smallest count; a tight one needs more.
  const auto loose = tandem_run(base + " --gpus 8,4,2 --tokens 1e11 --days 100");
  REQUIRE(loose.code == 0);
  const json l = json::parse(loose.out);
  CHECK(l["gpus"] == 2);          // counts are tried smallest first
  CHECK(l["tried"].size() == 1);  // and the search stops at the first that meets it
  const double days_at_2 = l["tried"][0]["days"].get<double>();
  const auto tight = tandem_run(base + " --gpus 2,4,8 --tokens 1e11 --days " + std::to_string(days_at_2 * 0.9));
  REQUIRE(tight.code == 0);
  const json t = json::parse(tight.out);
  REQUIRE(t["tried"].size() >= 2);
  CHECK(t["tried"][0]["meets"] == false);
  if (!t["gpus"].is_null()) CHECK(t["gpus"].get<int>() > 2);
  for (const json& row : t["tried"])
    if (row["status"] == "ok") CHECK(row["cost_usd"].get<double>() == Approx(row["gpu_hours"].get<double>() * t["price_per_gpu_hour"].get<double>()));
  // Bad capacity options.
  for (const std::string& bad : {std::string(" --gpus 2,4"), std::string(" --gpus 2,x --days 1"), std::string(" --gpus 2 --days 1 --tokens -1")}) {
    INFO(bad);
    const auto r = tandem_run("plan " + repo("scenarios/tiny-dualpipe.yaml") + bad, true);
    CHECK(r.code == 2);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
}

TEST_CASE("plan stopped midway stops its simulations and leaves its CSV marked incomplete", "[plan]") {
  tandem::test::TempDir dir;
  // The repository through a link of this test's own: its running children are recognisable.
  std::filesystem::create_directory_symlink(TANDEM_SOURCE_DIR, dir.file("repo"));
  const std::string scenario = dir.file("repo") + "/scenarios/deepseek-v3-2048.yaml";
  const std::string cut = dir.file("cut.csv");
  const auto r = tandem::run_process(
      // A background job of a script ignores SIGINT unless told otherwise (as a terminal's Ctrl-C
      // reaches a foreground job).
      "sh -c 'env --default-signal=INT " + std::string(TANDEM_BINARY) + " plan " + scenario +
      " --fix plan.pp=16 --fix plan.ep=64 --fix schedule.kind=dualpipe --fix batch.micro_batch_sequences=1"
      " --fix plan.dp_overlap=false --vary comm.sms=8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24 --no-prune -j 1 --csv " + cut +
      " >/dev/null 2>&1 & p=$!; i=0; while [ $i -lt 300 ] && [ $(cat " + cut + ".incomplete 2>/dev/null | wc -l) -lt 2 ]; do "
      "sleep 0.2; i=$((i+1)); done; kill -INT $p; wait $p; echo $?; sleep 1; pgrep -f \"simulat[e] " + scenario + "\" | wc -l'");
  std::istringstream out(r.out);
  int code = -1, left = -1;
  out >> code >> left;
  CHECK(code == 130);  // 128 + SIGINT
  CHECK(left == 0);    // no simulation left running
  CHECK(!std::filesystem::exists(cut));
  REQUIRE(std::filesystem::exists(cut + ".incomplete"));
  // Interrupted once the first simulation was in: its row is kept.
  std::ifstream partial(cut + ".incomplete");
  std::string header, row;
  std::getline(partial, header);
  std::getline(partial, row);
  CHECK(row.find(",ok,") != std::string::npos);
}

#ifdef TANDEM_MPIEXEC
TEST_CASE("plan under mpiexec -n 2 gives the -j 1 ranking", "[.][plan_mpi]") {
  const json one = plan("-j 1");
  const auto r = tandem::run_process(std::string(TANDEM_MPIEXEC) + " " + TANDEM_BINARY + " plan " +
                                     repo("scenarios/tiny-dualpipe.yaml") + kSearch + " --json -j 1");
  INFO(r.out);
  REQUIRE(r.code == 0);
  const json two = json::parse(r.out);  // one JSON object: only process 0 prints
  CHECK(two["processes"] == 2);
  for (const char* k : {"enumerated", "infeasible", "pruned", "simulated", "ranked", "scenario_plan_rank", "infeasible_by_key"})
    CHECK(one[k] == two[k]);
  CHECK(one["plans"] == two["plans"]);
  // And sweep: the same rows.
  const std::string sweep = " sweep " + repo("scenarios/tiny-dualpipe.yaml") + " --vary plan.pp=1,2,4 --vary plan.ep=1,2 --json";
  const auto a = tandem_run(sweep), b = tandem::run_process(std::string(TANDEM_MPIEXEC) + " " + TANDEM_BINARY + sweep);
  REQUIRE(a.code == 0);
  REQUIRE(b.code == 0);
  json ra = json::parse(a.out)["runs"], rb = json::parse(b.out)["runs"];
  for (json* runs : {&ra, &rb})
    for (json& row : *runs) row.erase("sim_wall_s");
  CHECK(ra == rb);
}
#endif
