// The simulator end to end, through the tandem binary (SimGrid allows one engine per process).
// The fidelity proof: a 128-GPU scenario in the aggregated (DeepEP-flow) tier and in the
// per-pair flow tier gives step times within 3%.
#include <catch2/catch.hpp>

#include <array>
#include <map>
#include <set>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <cstdio>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using tandem::test::repo;

namespace {

using Run = tandem::ProcessRun;

Run tandem_run(const std::string& args) {
  return tandem::run_process(std::string(TANDEM_BINARY) + " " + args + " 2>/dev/null");
}

nlohmann::json simulate(const std::string& scenario, const std::string& extra) {
  const Run r = tandem_run("simulate " + repo(scenario) + " --json " + extra);
  INFO(r.out);
  REQUIRE(r.code == 0);
  return nlohmann::json::parse(r.out);
}

}  // namespace

TEST_CASE("fast and full fidelity tiers agree within 3% on 128 GPUs", "[simtier]") {
  const auto full = simulate("scenarios/tiny-sim-128.yaml", "--fidelity per_pair");
  const auto agg = simulate("scenarios/tiny-sim-128.yaml", "--fidelity aggregated");
  const auto fast = simulate("scenarios/tiny-sim-128.yaml", "--fidelity replicated");
  const auto grouped = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped");
  const double f = full["step_time_s"].get<double>(), a = agg["step_time_s"].get<double>(),
               r = fast["step_time_s"].get<double>();
  // Balanced routing: every member alike, so the grouped tier plays the replicated tier's times.
  CHECK(grouped["step_time_s"].get<double>() == Approx(r).epsilon(1e-9));
  WARN("128 GPUs: per-pair " << f * 1e3 << " ms (" << full["sim_wall_s"].get<double>() << " s wall), aggregated "
                             << a * 1e3 << " ms (" << agg["sim_wall_s"].get<double>() << " s), replicated " << r * 1e3
                             << " ms (" << fast["sim_wall_s"].get<double>() << " s, "
                             << fast["gpus_simulated"].get<int>() << " GPUs simulated)");
  CHECK(full["gpus_simulated"] == 128);
  CHECK(fast["gpus_simulated"] == 4);
  CHECK(std::abs(a - f) / f < 0.03);
  CHECK(std::abs(r - f) / f < 0.03);
}

// The every-GPU fast path at 512 GPUs (tiny-sim-128 widened: 64 nodes, DP128) against the flow
// tier that carries DeepEP's flows, balanced and skewed (per-pair is too slow here for CI).
TEST_CASE("grouped and aggregated tiers agree within 3% on 512 GPUs", "[simtier]") {
  const std::string wide = " --set gpus=512 --set cluster.nodes=64 --set batch.global_sequences=1024";
  for (const std::string routing : {"", " --set routing.model=skewed --set routing.skew=0.5"}) {
    const auto agg = simulate("scenarios/tiny-sim-128.yaml", "--fidelity aggregated" + wide + routing);
    const auto grouped = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped" + wide + routing);
    const double a = agg["step_time_s"].get<double>(), g = grouped["step_time_s"].get<double>();
    WARN("512 GPUs" << routing << ": aggregated " << a * 1e3 << " ms (" << agg["sim_wall_s"].get<double>() << " s wall), grouped "
                    << g * 1e3 << " ms (" << grouped["sim_wall_s"].get<double>() << " s)");
    CHECK(agg["gpus_simulated"] == 512);
    CHECK(grouped["gpus_simulated"] == 512);
    CHECK(std::abs(g - a) / a < 0.03);
  }
}

// Skewed routing breaks the replicas' symmetry: the grouped tier (every GPU, analytic EP-group
// all-to-alls) against per-pair flows, with hot GPUs that compute and receive more.
TEST_CASE("grouped and per-pair tiers agree within 3% under skewed routing", "[simtier]") {
  for (const char* skew : {"0.5", "1.0"}) {
    const std::string set = std::string(" --set routing.model=skewed --set routing.skew=") + skew;
    const auto full = simulate("scenarios/tiny-sim-128.yaml", "--fidelity per_pair" + set);
    const auto grouped = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped" + set);
    const auto balanced = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped");
    const double f = full["step_time_s"].get<double>(), g = grouped["step_time_s"].get<double>();
    WARN("skew " << skew << ": per-pair " << f * 1e3 << " ms (" << full["sim_wall_s"].get<double>()
                 << " s wall), grouped " << g * 1e3 << " ms (" << grouped["sim_wall_s"].get<double>() << " s)");
    CHECK(grouped["gpus_simulated"] == 128);
    CHECK(std::abs(g - f) / f < 0.03);
    // Stragglers cost time: the skewed step is slower than the balanced one.
    CHECK(g > balanced["step_time_s"].get<double>() * 1.05);
  }
  // The replicated tier refuses skew rather than mirroring one replica.
  CHECK(tandem_run("simulate " + repo("scenarios/tiny-sim-128.yaml") +
                   " --fidelity replicated --set routing.model=skewed --set routing.skew=0.5").code == 2);
}

TEST_CASE("simulate reports the headline metrics and is deterministic", "[simtier]") {
  const auto r = simulate("scenarios/tiny-dualpipe.yaml", "");
  for (const char* k : {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "bubble_fraction", "exposed_comm_fraction",
                        "gpu_hours_per_trillion_tokens", "sim_wall_s"})
    CHECK(r.contains(k));
  const double f = r["bubble_fraction"].get<double>() + r["exposed_comm_fraction"].get<double>() +
                   r["compute_busy_fraction"].get<double>();
  CHECK(f == Approx(1.0).epsilon(1e-6));
  CHECK(r["mfu_causal"].get<double>() > 0);
  CHECK(r["mfu_causal"].get<double>() < r["mfu_noncausal"].get<double>());
  const auto again = simulate("scenarios/tiny-dualpipe.yaml", "");
  CHECK(again["step_time_s"] == r["step_time_s"]);
  // Each schedule runs to the end.
  for (const char* k : {"1f1b", "zb1p", "dualpipev"}) {
    const std::string scenario = std::string("scenarios/tiny-") + (std::string(k) == "dualpipev" ? "dualpipev" : "1f1b") + ".yaml";
    CHECK(simulate(scenario, std::string("--set schedule.kind=") + k)["step_time_s"].get<double>() > 0);
  }
}

TEST_CASE("simulate writes a Perfetto trace and rejects bad options", "[simtier]") {
  const std::string trace = "/tmp/tandem_tests_trace.json";
  simulate("scenarios/tiny-dualpipe.yaml", "--trace " + trace + " --trace-gpus 2");
  std::FILE* f = std::fopen(trace.c_str(), "r");
  REQUIRE(f != nullptr);
  std::fclose(f);
  const auto doc = nlohmann::json::parse(std::ifstream(trace));
  CHECK(doc["traceEvents"].size() > 10);
  CHECK(tandem_run("simulate " + repo("scenarios/tiny-dualpipe.yaml") + " --fidelity nonsense").code == 2);
  CHECK(tandem_run("simulate " + repo("scenarios/tiny-dualpipe.yaml") + " --calibration /nonexistent.yaml").code == 2);
}

TEST_CASE("sweep runs the cross product and reports rejected combinations as rows", "[simtier]") {
  const std::string csv = "/tmp/tandem_tests_sweep.csv";
  const Run r = tandem_run("sweep " + repo("scenarios/tiny-dualpipe.yaml") +
                           " --vary comm.sms=10,20 --vary plan.pp=4,3 --json --csv " + csv);
  INFO(r.out);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  REQUIRE(j["runs"].size() == 4);
  int ok = 0, rejected = 0;
  for (const auto& row : j["runs"]) {
    const std::string status = row["status"];
    if (status == "ok") {
      ++ok;
      CHECK(row["step_time_s"].get<double>() > 0);
    } else {
      ++rejected;  // PP3 does not divide 8 GPUs (and DualPipe needs an even PP)
      CHECK(status.find("rejected") == 0);
      CHECK(status.find("plan.pp") != std::string::npos);
    }
  }
  CHECK(ok == 2);
  CHECK(rejected == 2);
  std::ifstream in(csv);
  std::string header;
  std::getline(in, header);
  CHECK(header.rfind("comm.sms,plan.pp,step_time_s", 0) == 0);
  CHECK(tandem_run("sweep " + repo("scenarios/tiny-dualpipe.yaml") + " --vary comm.sms").code == 2);
}

TEST_CASE("compute tasks take the same time whether or not a transfer starts beside them", "[simtier]") {
  // The SM budget is the kernels' launch configuration, not a guess at the moment a task starts:
  // every instance of a compute task of one block lasts the same in every slot, in both the
  // replicated and the all-GPU grouped tier.
  const tandem::test::TempDir dir;
  for (const char* tier : {"replicated", "grouped"}) {
    const std::string trace = dir.file(std::string(tier) + ".json");
    simulate("scenarios/tiny-sim-128.yaml", std::string("--fidelity ") + tier + " --trace " + trace + " --trace-gpus 128");
    std::ifstream in(trace);
    const auto j = nlohmann::json::parse(in);
    std::map<std::pair<std::string, int>, std::pair<double, double>> span;  // (kind, block) -> min, max duration
    int overlapped = 0;
    for (const auto& e : j["traceEvents"]) {
      // Block tasks only: the optimizer's shard differs from rank to rank.
      if (e["ph"] != "X" || e["cat"] != "compute" || e["args"]["block"].get<int>() < 0) continue;
      const auto key = std::make_pair(e["name"].get<std::string>(), e["args"]["block"].get<int>());
      const double d = e["dur"].get<double>();
      auto [it, fresh] = span.emplace(key, std::make_pair(d, d));
      if (!fresh) {
        it->second.first = std::min(it->second.first, d);
        it->second.second = std::max(it->second.second, d);
      }
    }
    for (const auto& e : j["traceEvents"])
      if (e["ph"] == "X" && e["cat"] == "comm" && e["name"].get<std::string>().rfind("dispatch", 0) == 0) ++overlapped;
    REQUIRE(overlapped > 0);
    REQUIRE(span.size() > 10);
    for (const auto& [key, mm] : span) {
      INFO(tier << " " << key.first << " block " << key.second);
      CHECK(mm.second == Approx(mm.first).epsilon(1e-9));
    }
  }
}

TEST_CASE("more communication SMs: faster all-to-alls, slower GEMMs", "[simtier]") {
  const auto few = simulate("scenarios/tiny-sim-128.yaml", "--set comm.sms=10");
  const auto more = simulate("scenarios/tiny-sim-128.yaml", "--set comm.sms=20");
  const auto& a = few["seconds_by_kind"];
  const auto& b = more["seconds_by_kind"];
  CHECK(b["dispatch_f"].get<double>() < a["dispatch_f"].get<double>());
  CHECK(b["combine_b"].get<double>() < a["combine_b"].get<double>());
  CHECK(b["mlp_f"].get<double>() > a["mlp_f"].get<double>());
  CHECK(b["attn_b"].get<double>() > a["attn_b"].get<double>());
}

TEST_CASE("the balancer's program estimate tracks the simulator", "[simtier]") {
  // describe's estimate plays the same Program with the same task costs and estimates the network;
  // with balanced routing it lands near the replicated tier (what makes its partition choices
  // trustworthy).
  for (const char* scenario : {"scenarios/tiny-sim-128.yaml", "scenarios/deepseek-v3-2048.yaml"}) {
    const Run d = tandem_run("describe " + repo(scenario) + " --json");
    REQUIRE(d.code == 0);
    const double estimate = nlohmann::json::parse(d.out)["stage_partition"]["estimated_step_s"].get<double>();
    const double step = simulate(scenario, "")["step_time_s"].get<double>();
    INFO(scenario << ": estimate " << estimate << " s, simulated " << step << " s");
    CHECK(estimate == Approx(step).epsilon(0.05));
  }
}

TEST_CASE("simulate's output: versioned JSON, a chosen token budget, readable units, every rank traced", "[simtier]") {
  const auto j = simulate("scenarios/tiny-sim-128.yaml", "--tokens 1e12");
  CHECK(j["schema_version"].get<int>() >= 2);
  CHECK(!j["tandem_version"].get<std::string>().empty());
  CHECK(j["training_tokens"].get<double>() == 1e12);
  const double step = j["step_time_s"].get<double>(), tokens = j["tokens_per_step"].get<double>();
  CHECK(j["days_for_training_tokens"].get<double>() == Approx(1e12 / tokens * step / 86400.0));
  // A millisecond step prints in milliseconds, not as 0.000 s; the breakdown comes most first.
  const Run text = tandem_run("simulate " + repo("scenarios/tiny-sim-128.yaml"));
  REQUIRE(text.code == 0);
  CHECK(text.out.find(" ms ") != std::string::npos);
  CHECK(text.out.find("0.000 s") == std::string::npos);
  // The default trace holds one GPU per pipeline rank (the replicated tier's simulated GPUs).
  const tandem::test::TempDir dir;
  const std::string trace = dir.file("ranks.json");
  simulate("scenarios/tiny-sim-128.yaml", "--trace " + trace);
  std::ifstream in(trace);
  const auto events = nlohmann::json::parse(in);
  std::set<int> gpus;
  for (const auto& e : events["traceEvents"])
    if (e["ph"] == "X") gpus.insert(e["pid"].get<int>());
  CHECK(gpus.size() == 4);  // PP4
}

TEST_CASE("a slow GPU slows the step and is the one its EP group waits for", "[simtier]") {
  const auto nominal = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped");
  const auto slow = simulate("scenarios/tiny-sim-128.yaml", "--set faults.slow_gpus=[37] --set faults.slow_speed=0.8");
  CHECK(slow["fidelity"] == "grouped");  // auto: faults need every GPU simulated
  CHECK(slow["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
  REQUIRE(slow.contains("waited_on"));
  const auto& top = slow["waited_on"][0];
  CHECK(top["gpu"] == 37);
  CHECK(top["rank"] == 1);  // GPU = rank x dp + replica, dp 32
  CHECK(top["member"] == 5);
  CHECK(top["speed"].get<double>() == Approx(0.8));
  CHECK(top["waited_on_at_all_to_alls_s"].get<double>() > 0);
  // With no fault, waits spread over the group (balanced routing: ties), and nominal speeds.
  for (const auto& w : nominal.value("waited_on", nlohmann::json::array())) CHECK(w["speed"].get<double>() == 1.0);

  // A seeded fraction: the same seed, the same stragglers and step; another seed may differ.
  const std::string frac = "--set faults.slow_fraction=0.05 --set faults.slow_speed=0.7";
  const auto a = simulate("scenarios/tiny-sim-128.yaml", frac), b = simulate("scenarios/tiny-sim-128.yaml", frac);
  CHECK(a["step_time_s"] == b["step_time_s"]);
  CHECK(a["waited_on"] == b["waited_on"]);
  CHECK(a["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
}

TEST_CASE("a failed plane or NIC: routes go around it, the step slows, its GPUs are named", "[simtier]") {
  const auto nominal = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped");
  const auto plane = simulate("scenarios/tiny-sim-128.yaml", "--set faults.failed_planes=[0]");
  CHECK(plane["fidelity"] == "grouped");  // auto: faults need every GPU simulated
  CHECK(plane["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
  // Plane 0 is the NIC of local GPU 0 on every node (8 per node): the GPUs waited on are those.
  REQUIRE(plane.contains("waited_on"));
  CHECK(plane["waited_on"][0]["nic"] == "down");
  CHECK(plane["waited_on"][0]["gpu"].get<int>() % 8 == 0);
  // The flow tier agrees with the grouped one within 10% (2.3% measured; healthy fabrics: 3%).
  const auto agg = simulate("scenarios/tiny-sim-128.yaml", "--fidelity aggregated --set faults.failed_planes=[0]");
  CHECK(agg["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
  CHECK(plane["step_time_s"].get<double>() == Approx(agg["step_time_s"].get<double>()).epsilon(0.10));
  // One failed NIC, or one at half rate: slower, and deterministic.
  const auto nic = simulate("scenarios/tiny-sim-128.yaml", "--set faults.failed_nics=[5]");
  CHECK(nic["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
  const auto again = simulate("scenarios/tiny-sim-128.yaml", "--set faults.failed_nics=[5]");
  CHECK(nic["step_time_s"] == again["step_time_s"]);
  CHECK(nic["waited_on"] == again["waited_on"]);
  const auto half = simulate("scenarios/tiny-sim-128.yaml", "--set faults.slow_nics=[5] --set faults.nic_speed=0.5");
  CHECK(half["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
}

TEST_CASE("bad fault specs and the replicated tier are refused in one line", "[simtier]") {
  for (const std::string& bad : {std::string("--set faults.slow_gpus=[128] --set faults.slow_speed=0.8"),
                                 std::string("--set faults.slow_gpus=[5]"), std::string("--set faults.slow_gpus=[5] --set faults.slow_speed=0"),
                                 std::string("--set faults.slow_gpus=[5] --set faults.slow_speed=1.5"),
                                 std::string("--set faults.slow_fraction=2 --set faults.slow_speed=0.5"),
                                 std::string("--set faults.slow_gpus=[5] --set faults.slow_speed=0.8 --fidelity replicated"),
                                 std::string("--set faults.plane=1"),
                                 std::string("--set faults.failed_planes=[8]"),
                                 std::string("--set faults.failed_planes=[0,1,2,3,4,5,6,7]"),
                                 std::string("--set faults.failed_nics=[128]"),
                                 std::string("--set faults.failed_nics=[0,1,2,3,4,5,6,7]"),  // node 0 cut off
                                 std::string("--set faults.slow_nics=[3]"),                   // no nic_speed
                                 std::string("--set faults.slow_nics=[3] --set faults.nic_speed=2"),
                                 std::string("--set faults.failed_planes=[1] --fidelity replicated"),
                                 std::string("--set faults.failed_spines=[100]"),  // one leaf per plane here: no spines
                                 std::string("--trace /dev/full")}) {  // a trace that cannot be written
    INFO(bad);
    const Run r = tandem::run_process(std::string(TANDEM_BINARY) + " simulate " + repo("scenarios/tiny-sim-128.yaml") + " " + bad + " 2>&1");
    CHECK(r.code == 2);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
}

TEST_CASE("skewed routing patterns read back from the disk cache are the ones sampled", "[simtier]") {
  tandem::test::TempDir dir;
  const std::string args = " simulate " + repo("scenarios/tiny-sim-128.yaml") + " --set routing.model=skewed --set routing.skew=0.5 --json 2>/dev/null";
  auto step = [&](const std::string& cache) {
    const Run r = tandem::run_process("TANDEM_CACHE_DIR='" + cache + "' " + std::string(TANDEM_BINARY) + args);
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(r.out)["step_time_s"].get<double>();
  };
  const double uncached = step("");  // an empty TANDEM_CACHE_DIR: no cache
  const double cold = step(dir.path.string()), warm = step(dir.path.string());
  CHECK(cold == uncached);
  CHECK(warm == uncached);
  // A damaged file is sampled again, not trusted.
  int files = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir.path)) {
    std::ofstream(f.path()) << "tandem routing pattern v1: something else\n1 2 3\n";
    ++files;
  }
  CHECK(files > 0);
  CHECK(step(dir.path.string()) == uncached);
}

TEST_CASE("per-micro-batch routing noise is seeded and slows the step", "[simtier]") {
  const auto nominal = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped");
  const auto a = simulate("scenarios/tiny-sim-128.yaml", "--set routing.noise=0.13");
  const auto b = simulate("scenarios/tiny-sim-128.yaml", "--set routing.noise=0.13");
  const auto other = simulate("scenarios/tiny-sim-128.yaml", "--set routing.noise=0.13 --set routing.seed=7");
  CHECK(a["fidelity"] == "grouped");
  CHECK(a["step_time_s"] == b["step_time_s"]);
  CHECK(a["step_time_s"] != other["step_time_s"]);
  // Each all-to-all waits for its group's busiest member: noise with a mean of 1 still costs.
  CHECK(a["step_time_s"].get<double>() > nominal["step_time_s"].get<double>());
  const Run refused = tandem::run_process(std::string(TANDEM_BINARY) + " simulate " + repo("scenarios/tiny-sim-128.yaml") +
                                          " --set routing.noise=0.13 --fidelity replicated 2>&1");
  CHECK(refused.code == 2);
  CHECK(std::count(refused.out.begin(), refused.out.end(), '\n') == 1);
}

TEST_CASE("a simulation stopped by Ctrl-C says so in one line", "[simtier]") {
  tandem::test::TempDir dir;
  const std::string err = dir.file("err");
  // Every GPU of the default scenario: long enough to be stopped midway.
  const Run r = tandem::run_process("timeout --preserve-status -s INT 3 " + std::string(TANDEM_BINARY) + " simulate " +
                                    repo("scenarios/deepseek-v3-2048.yaml") + " --fidelity grouped >/dev/null 2>" + err);
  std::ifstream in(err);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(r.code == 130);
  CHECK(text == "tandem: interrupted: the simulation was stopped\n");
}

// Measured routing (a per-layer expert histogram replayed through the gate): like skewed routing,
// members of a group differ, so auto picks the grouped tier and replicated refuses; grouped and
// per-pair agree as under skew; the pattern is the same in every process and through the cache.
TEST_CASE("measured routing runs in the tiers that simulate every GPU", "[simtier]") {
  const std::string scenario = "scenarios/tiny-sim-128-measured-routing.yaml";
  const auto full = simulate(scenario, "--fidelity per_pair");
  const auto grouped = simulate(scenario, "");  // auto
  const auto balanced = simulate("scenarios/tiny-sim-128.yaml", "--fidelity grouped");
  CHECK(grouped["fidelity"] == "grouped");
  CHECK(grouped["gpus_simulated"] == 128);
  CHECK(grouped["routing"]["model"] == "measured");
  CHECK(grouped["routing"]["histogram"] == repo("scenarios/tiny-sim-128-measured-routing.csv"));
  const double f = full["step_time_s"].get<double>(), g = grouped["step_time_s"].get<double>();
  WARN("measured: per-pair " << f * 1e3 << " ms, grouped " << g * 1e3 << " ms, balanced "
                             << balanced["step_time_s"].get<double>() * 1e3 << " ms");
  CHECK(std::abs(g - f) / f < 0.03);
  CHECK(g > balanced["step_time_s"].get<double>() * 1.05);  // its hot GPUs cost time
  CHECK(grouped["routing"]["max_gpu_load"].get<double>() > 1.1);
  const Run replicated = tandem::run_process(std::string(TANDEM_BINARY) + " simulate " + repo(scenario) +
                                             " --fidelity replicated 2>&1");
  CHECK(replicated.code == 2);
  CHECK(replicated.out.find("measured routing needs grouped") != std::string::npos);
  // noise combines with it.
  CHECK(simulate(scenario, "--set routing.noise=0.1")["step_time_s"].get<double>() != g);
}

TEST_CASE("measured routing patterns are the same in every process and through the disk cache", "[simtier]") {
  tandem::test::TempDir dir;
  const std::string args = " simulate " + repo("scenarios/tiny-sim-128-measured-routing.yaml") + " --json 2>/dev/null";
  auto routing = [&](const std::string& cache) {
    const Run r = tandem::run_process("TANDEM_CACHE_DIR='" + cache + "' " + std::string(TANDEM_BINARY) + args);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    return std::make_pair(j["step_time_s"].get<double>(), j["routing"].dump());
  };
  const auto first = routing(""), second = routing("");  // no cache: fitted twice
  CHECK(first == second);
  const auto cold = routing(dir.path.string()), warm = routing(dir.path.string());
  CHECK(cold == first);
  CHECK(warm == first);
  int files = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir.path)) {
    std::ifstream in(f.path());
    std::string line;
    std::getline(in, line);
    CHECK(line.find("tandem routing pattern v2:") == 0);
    CHECK(line.find(" measured ") != std::string::npos);
    ++files;
  }
  CHECK(files == 8);  // one a MoE layer
}
