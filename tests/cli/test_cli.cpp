// The tandem binary as a user runs it: exit codes, error messages, JSON output.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <cstdio>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "exec/cuda_backend.h"
#include "exec/gpu_probe.h"
#include "../test_paths.h"

using tandem::test::repo;

namespace {

using Run = tandem::ProcessRun;

// Runs tandem with `args`; `with_stderr` merges stderr into the captured output.
Run run(const std::string& args, bool with_stderr = true) {
  return tandem::run_process(std::string(TANDEM_BINARY) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null"));
}

Run run_stdout(const std::string& args) { return run(args, false); }

}  // namespace

TEST_CASE("describe --json of the default scenario has the headline keys", "[cli]") {
  const Run r = run_stdout("describe " + repo("scenarios/deepseek-v3-2048.yaml") + " --json");
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["params_total"].get<double>() == Approx(671.03e9).epsilon(0.001));
  CHECK(j["params_active"].get<double>() == Approx(36.63e9).epsilon(0.001));
  CHECK(j["params_mtp"].get<double>() == Approx(11.61e9).epsilon(0.001));
  CHECK(j["train_flops_per_token"].get<double>() == Approx(250.46e9).epsilon(0.001));
  CHECK(j["kv_cache_bytes_per_token"].get<double>() == 70272.0);
  CHECK(j["bisection_bytes_per_s"].get<double>() == Approx(51.2e12));
  CHECK(j["memory_per_rank"].size() == 16);
  CHECK(j["memory_peak_bytes"].get<double>() < 80e9);
  CHECK(j["plan"]["micro_batches"] == 120);
}

TEST_CASE("describe takes model cards, cluster cards and --set", "[cli]") {
  Run r = run_stdout("describe " + repo("models/deepseek-v2.yaml") + " --json");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["params_total"].get<double>() == Approx(235.74e9).epsilon(0.001));
  r = run_stdout("describe " + repo("topologies/h100-1gpu.yaml"));
  CHECK(r.code == 0);
  r = run_stdout("describe " + repo("scenarios/deepseek-v3-2048.yaml") +
                 " --set plan.pp=16 --set cluster.nic_gbps=800 --json");
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["gpus"] == 2048);
  r = run("describe " + repo("scenarios/deepseek-v3-2048.yaml") + " --ops");
  CHECK(r.code == 0);
  CHECK(r.out.find("experts.gate_up") != std::string::npos);
  CHECK(r.out.find("Stage partition") != std::string::npos);
}

TEST_CASE("bad input exits 2 with file, key and reason", "[cli]") {
  Run r = run("describe " + repo("scenarios/deepseek-v3-2048.yaml") + " --set plan.pp=7");
  CHECK(r.code == 2);
  CHECK(r.out.find("deepseek-v3-2048.yaml [--set]: plan.pp:") != std::string::npos);
  r = run("describe /nonexistent/card.yaml");
  CHECK(r.code == 2);
  CHECK(r.out.find("no such file") != std::string::npos);
  r = run("describe " + repo("README.md"));
  CHECK(r.code == 2);
  r = run("describe " + repo("scenarios/deepseek-v3-2048.yaml") + " --set");
  CHECK(r.code == 2);
  r = run("frobnicate");
  CHECK(r.code == 2);
  r = run("describe " + repo("models/tiny-moe.yaml") + " --set plan.pp=2");
  CHECK(r.code == 2);
  CHECK(r.out.find("--set applies to scenarios only") != std::string::npos);
}

TEST_CASE("a bad routing histogram exits 2 with one line naming the file and the reason", "[cli]") {
  const std::string scenario = repo("scenarios/tiny-sim-128-measured-routing.yaml");
  const std::string csv = repo("scenarios/tiny-sim-128-measured-routing.csv");
  struct Case {
    std::string set, file, says;
  };
  for (const Case& c : std::vector<Case>{
           {"routing.histogram=routing/none.csv", scenario + " [--set]: routing.histogram", "no such file"},
           {"routing.histogram=tiny-sim-128.yaml", repo("scenarios/tiny-sim-128.yaml") + ": line 4", "expected the header"},
           {"model.num_hidden_layers=10", csv + ": layer 9", "no rows for MoE layer 9"},
           {"model.n_routed_experts=32", csv + ": line 36", "expert 32 out of range"},
           {"routing.model=balanced", scenario + " [with --set routing.model=balanced]: routing.histogram", "'model: measured' only"}}) {
    for (const char* command : {"describe", "simulate"}) {
      const Run r = run(std::string(command) + " " + scenario + " --set " + c.set);
      INFO(command << " --set " << c.set << ": " << r.out);
      CHECK(r.code == 2);
      CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
      CHECK(r.out.find(c.file) != std::string::npos);
      CHECK(r.out.find(c.says) != std::string::npos);
    }
  }
}

TEST_CASE("execute names the backends it has", "[cli]") {
  // No GPU in CI: a CUDA build says no device is present, a build without CUDA says so.
  Run r = run("execute " + repo("scenarios/tiny-dualpipe.yaml") + " --backend cuda");
  if (tandem::probe_gpus().devices > 0) {
    CHECK(r.code == 0);
  } else {
    CHECK(r.code == 2);
    CHECK(r.out.find("--backend") != std::string::npos);
    CHECK((r.out.find("no CUDA device is present") != std::string::npos ||
           r.out.find("this build has no CUDA backend") != std::string::npos));
  }
  r = run("execute " + repo("scenarios/tiny-dualpipe.yaml") + " --backend cuda --cuda-world pigeon");
  CHECK(r.code == 2);
  CHECK((r.out.find("expected auto, virtual or nccl") != std::string::npos ||
         r.out.find("this build has no CUDA backend") != std::string::npos));
  r = run("execute " + repo("scenarios/tiny-dualpipe.yaml") + " --backend tpu");
  CHECK(r.code == 2);
  CHECK(r.out.find("expected cpu or cuda") != std::string::npos);
}

TEST_CASE("the CUDA backend's libraries load only for a command that asks for a GPU", "[cli]") {
  // The loader's own report (LD_DEBUG=files) lists every shared object the process opens.
  const std::string scenario = repo("scenarios/tiny-dualpipe.yaml");
  Run r = tandem::run_process("LD_DEBUG=files " + std::string(TANDEM_BINARY) + " describe " + scenario + " 2>&1 >/dev/null");
  CHECK(r.code == 0);
  CHECK(r.out.find("libtandem_cuda") == std::string::npos);
  CHECK(r.out.find("libcublas") == std::string::npos);
  CHECK(r.out.find("libcudart") == std::string::npos);
  CHECK(r.out.find("libnccl") == std::string::npos);
  if (!tandem::cuda_backend_built()) return;
  // Only here does the module come in, and with it the CUDA libraries.
  r = tandem::run_process("LD_DEBUG=files " + std::string(TANDEM_BINARY) + " execute " + scenario +
                          " --backend cuda --steps 1 2>&1 >/dev/null");
  CHECK(r.out.find("libtandem_cuda") != std::string::npos);
  CHECK(r.out.find("libcublasLt") != std::string::npos);
  if (tandem::probe_gpus().devices == 0) {
    CHECK(r.code == 2);
    CHECK(r.out.find("no CUDA device is present") != std::string::npos);
  }
}

TEST_CASE("a missing or foreign CUDA backend module is a clear error and no crash", "[cli]") {
  if (!tandem::cuda_backend_built()) return;  // the no-CUDA message is checked above
  const std::string scenario = repo("scenarios/tiny-dualpipe.yaml");
  Run r = tandem::run_process("TANDEM_CUDA_MODULE=/nonexistent/libtandem_cuda.so " + std::string(TANDEM_BINARY) +
                              " execute " + scenario + " --backend cuda 2>&1");
  CHECK(r.code == 2);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  CHECK(r.out.find("cannot load the CUDA backend module /nonexistent/libtandem_cuda.so") != std::string::npos);
  // A shared object that is not the module (libc): refused by its missing entry point.
  r = tandem::run_process("TANDEM_CUDA_MODULE=libc.so.6 " + std::string(TANDEM_BINARY) + " bench quant 2>&1");
  CHECK(r.code == 2);
  CHECK(r.out.find("is not a tandem CUDA backend module") != std::string::npos);
}

TEST_CASE("schedule --json reports bubbles and peak activations per rank", "[cli]") {
  const std::string svg = "/tmp/tandem_tests_schedule.svg";
  Run r = run_stdout("schedule " + repo("scenarios/deepseek-v3-2048.yaml") + " --json --unit-costs 1,2,1,2.5 --svg " + svg);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  REQUIRE(j["bubble_per_rank"].size() == 16);
  double worst = 0;
  for (const auto& b : j["bubble_per_rank"]) worst = std::max(worst, b.get<double>());
  CHECK(worst == Approx(10.5));  // (PP/2 - 1)(F&B + B - 3W)
  for (const auto& p : j["peak_activations_per_rank"]) CHECK(p == 17);
  CHECK(j["per_rank"][0]["overlapped"] == 97);
  std::ifstream in(svg);
  std::string head;
  std::getline(in, head);
  CHECK(head.rfind("<svg", 0) == 0);

  r = run("schedule " + repo("scenarios/deepseek-v3-2048.yaml") + " --unit-costs 1,2");
  CHECK(r.code == 2);
  CHECK(r.out.find("--unit-costs") != std::string::npos);
  r = run("schedule " + repo("scenarios/deepseek-v3-2048.yaml") + " --set batch.global_sequences=3840");
  CHECK(r.code == 2);
  CHECK(r.out.find("schedule.kind") != std::string::npos);
}

TEST_CASE("keys: docs/card-keys.md is what the card readers accept today", "[cli]") {
  // Regenerate with: tandem keys --out docs/card-keys.md
  const Run current = run("keys --check " + repo("docs/card-keys.md"));
  INFO(current.out);
  CHECK(current.code == 0);

  const Run stale = run("keys --check " + repo("README.md"));
  CHECK(stale.code == 2);
  CHECK(stale.out.find("out of date with the card readers") != std::string::npos);

  const Run reference = run_stdout("keys");
  REQUIRE(reference.code == 0);
  for (const char* row : {"| `hidden_size` | whole number | `[1, 1048576]` | required |",
                          "| `plan.ep` | whole number | `[1, 65536]` | `1` |",
                          "| `schedule.kind` | one of | `1f1b, zb1p, dualpipe, dualpipev` | required |",
                          "| `gemms[].tflops` | number |", "| `rules[].op` | text |"})
    CHECK(reference.out.find(row) != std::string::npos);
}

TEST_CASE("every --json output names tandem's version and its schema version", "[cli]") {
  const std::pair<const char*, const char*> runs[] = {{"describe", "scenarios/tiny-1f1b.yaml"},
                                                      {"schedule", "scenarios/tiny-1f1b.yaml"},
                                                      {"describe", "models/deepseek-v3.yaml"}};
  for (const auto& [command, card] : runs) {
    const Run r = run_stdout(std::string(command) + " " + repo(card) + " --json");
    INFO(command << " " << card);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    CHECK(j.at("schema_version").get<int>() >= 1);
    CHECK(!j.at("tandem_version").get<std::string>().empty());
  }
}
