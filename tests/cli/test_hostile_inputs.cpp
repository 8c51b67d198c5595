// Hostile and careless input through the real tandem binary: each case must end in exactly one
// line `tandem: error: FILE: KEY: REASON` on stderr and exit code 2 — never a crash, a hang, an
// allocation until the machine gives out, or a success on nonsense. Each child runs under an
// address-space limit and a timeout, so a regression fails the test instead of hanging CI or
// taking the machine's memory (the limit is left out in a sanitizer build, which reserves
// terabytes of address space for its shadow memory).
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <string>

#include "common/subprocess.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using tandem::test::repo;
using tandem::test::TempDir;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr const char* kLimit = "";
#else
constexpr const char* kLimit = "ulimit -v 2097152 && ";  // 2 GiB of address space
#endif

struct Outcome {
  int code = -1;    // the exit code; 124: killed by the timeout; > 128: a signal
  std::string err;  // everything on stderr
  int lines() const {
    int n = 0;
    for (char c : err) n += c == '\n';
    return n;
  }
};

// Runs `tandem args` bounded in time (20 s) and memory; stdout is dropped, stderr kept.
Outcome hostile(const std::string& args) {
  TempDir dir("tandem-hostile");
  const std::string err = dir.file("stderr");
  const tandem::ProcessRun r = tandem::run_process(std::string(kLimit) + "timeout -s KILL 20 " + TANDEM_BINARY +
                                                   " " + args + " >/dev/null 2>" + err);
  Outcome o;
  o.code = r.code;
  std::ifstream in(err);
  std::stringstream s;
  s << in.rdbuf();
  o.err = s.str();
  return o;
}

// The contract of a refused input: exit 2, one line, the error prefix, `needle` in it.
void refused(const std::string& args, const std::string& needle) {
  INFO("tandem " << args);
  const Outcome o = hostile(args);
  INFO("stderr: " << o.err);
  CHECK(o.code == 2);
  CHECK(o.lines() == 1);
  CHECK(o.err.rfind("tandem: error: ", 0) == 0);
  CHECK(o.err.find(needle) != std::string::npos);
}

const std::string kTiny = repo("scenarios/tiny-dualpipe.yaml");
const std::string kDefault = repo("scenarios/deepseek-v3-2048.yaml");

// A scenario of its own, in `dir`, with the shipped cards by absolute path and `extra` added.
std::string tiny_scenario(const TempDir& dir, const std::string& model_section) {
  return dir.write("s.yaml", "model:\n" + model_section + "cluster: {card: " + repo("topologies/h100-1024.yaml") +
                                 ", nodes: 1}\ngpus: 8\nplan: {pp: 4, ep: 2}\nschedule: {kind: dualpipe}\n"
                                 "batch: {global_sequences: 32, seq_len: 128, micro_batch_sequences: 2}\n");
}

}  // namespace

TEST_CASE("hostile: files that are not cards are refused without reading them", "[hostile]") {
  refused("describe /dev/zero", "not a regular file");
  TempDir dir;
  const std::string fifo = dir.file("fifo");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  refused("describe " + fifo, "not a regular file (a FIFO)");
  refused("describe " + dir.path.string(), "a directory");
  refused("describe " + dir.file("absent.yaml"), "no such file");
  const std::string big = dir.write("big.yaml", "a: '" + std::string(2u << 20, 'x') + "'\n");
  refused("describe " + big, "larger than");
}

TEST_CASE("hostile: a card that is not UTF-8 text is refused, also in JSON output", "[hostile]") {
  TempDir dir;
  // A scenario whose name carries bytes that are no UTF-8 (a stray 0xFE, a cut sequence).
  std::string text = "name: bad\xFE name\n";
  std::ifstream in(kTiny);
  std::stringstream rest;
  rest << in.rdbuf();
  for (std::string line; std::getline(rest, line);)
    if (line.rfind("name:", 0) != 0) {
      for (size_t at = line.find("../"); at != std::string::npos; at = line.find("../")) line.replace(at, 3, repo(""));
      text += line + "\n";
    }
  const std::string bad = dir.write("bad.yaml", text);
  refused("describe " + bad + " --json", "not UTF-8 text");
  refused("simulate " + bad + " --json", "byte 0xFE at line 1");
  const std::string cut = dir.write("cut.yaml", "name: \xE2\x82\n");
  refused("describe " + cut, "not UTF-8 text");
  refused("describe " + kTiny + " --set 'name=\xC0\xAF'", "not UTF-8 text");  // an overlong '/'
}

TEST_CASE("hostile: YAML aliases cannot expand without bound", "[hostile]") {
  // An alias inside itself: an endless tree (was a SIGSEGV in the override bookkeeping).
  refused("describe " + kTiny + " --set 'model.rope_scaling=&a {x: *a}'", "[--set]: model.rope_scaling");
  refused("describe " + kTiny + " --set 'model.rope_scaling=&a [*a, *a]'", "nested deeper");
  TempDir dir;
  const std::string card = "  card: " + repo("models/tiny-moe.yaml") + "\n";
  refused("describe " + tiny_scenario(dir, card + "  rope_scaling: &a {x: *a}\n"), "model.rope_scaling.x");
  // "Billion laughs": 9 levels of 10 aliases, 10^9 values in a few hundred bytes.
  std::string bomb = "  rope_scaling:\n    l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n";
  for (int i = 1; i <= 9; ++i) {
    const std::string p = "*l" + std::to_string(i - 1);
    bomb += "    l" + std::to_string(i) + ": &l" + std::to_string(i) + " [" + p;
    for (int j = 1; j < 10; ++j) bomb += ", " + p;
    bomb += "]\n";
  }
  refused("describe " + tiny_scenario(dir, card + bomb), "expands to more than");
  // The same bomb in a bare model card.
  std::ifstream in(repo("models/tiny-moe.yaml"));
  std::stringstream model;
  model << in.rdbuf();
  refused("describe " + dir.write("bomb.yaml", model.str() + bomb.substr(2)), "expands to more than");
}

TEST_CASE("hostile: a key written twice is an error, not first-wins", "[hostile]") {
  TempDir dir;
  const std::string s = dir.write("dup.yaml", "model: " + repo("models/tiny-moe.yaml") + "\ncluster: {card: " +
                                                  repo("topologies/h100-1024.yaml") +
                                                  ", nodes: 1}\ngpus: 8\nplan: {pp: 4, ep: 2, pp: 2}\n"
                                                  "schedule: {kind: dualpipe}\n"
                                                  "batch: {global_sequences: 32, seq_len: 128, micro_batch_sequences: 2}\n");
  refused("describe " + s, "plan.pp: key written twice");
  refused("describe " + kTiny + " --set 'plan={pp: 4, pp: 2}'", "[--set]: plan.pp: key written twice");
  const std::string json = dir.write("dup.json", R"({"command": "simulate", "command": "execute"})");
  refused("report " + json + " -o " + dir.file("r.html"), "command: key written twice");
}

TEST_CASE("hostile: a batch too large to hold as a program is refused before building it", "[hostile]") {
  // 1000 x the default batch: ~10^8 tasks; building them ran into bad_alloc.
  refused("schedule " + kDefault + " --set batch.global_sequences=15360000", "batch.global_sequences: the step would have");
  refused("describe " + kDefault + " --set batch.global_sequences=1073741824", "tasks");
}

TEST_CASE("hostile: a GPU without FP8 tensor cores cannot run the FP8 recipe", "[hostile]") {
  refused("describe " + kTiny + " --set cluster.gpu.fp8_tflops=0", "precision.recipe: fp8_block needs FP8 tensor cores");
  const Outcome bf16 = hostile("describe " + kTiny + " --set cluster.gpu.fp8_tflops=0 --set precision.recipe=bf16 "
                               "--set comm.dispatch_dtype=bf16");
  INFO(bf16.err);
  CHECK(bf16.code == 0);
  // Every other peak and bandwidth the cost model divides by must be positive, latencies >= 0.
  for (const char* key : {"gpu.bf16_tflops", "gpu.fp32_tflops", "gpu.hbm_tbytes_s", "nvlink_gbytes_s", "nic_gbps"})
    refused("describe " + kTiny + " --set cluster." + std::string(key) + "=0", "[--set]: cluster." + std::string(key) + ": must be in");
  for (const char* key : {"nvlink_latency_us", "fabric.latency_same_leaf_us"})
    refused("describe " + kTiny + " --set cluster." + std::string(key) + "=-1", "[--set]: cluster." + std::string(key) + ": must be in");
}

TEST_CASE("hostile: calibration rows beyond physics or with fractional shapes", "[hostile]") {
  TempDir dir;
  const std::string fast = dir.write("fast.yaml", "name: fast\noverlay: true\nfp8_gemms: [[4096, 7168, 2048, 1.0e9]]\n");
  refused("describe " + kTiny + " --set calibration=" + fast, "fp8_gemms[0]: tflops must be at most");
  const std::string frac = dir.write("frac.yaml", "name: frac\noverlay: true\nfp8_gemms: [[4096.5, 7168, 2048, 100]]\n");
  refused("describe " + kTiny + " --set calibration=" + frac, "whole numbers");
}

TEST_CASE("hostile: execute refuses what the executor does not run, naming the override", "[hostile]") {
  refused("execute " + kTiny + " --set model.scoring_func=softmax", "[--set]: model.scoring_func");
  refused("execute " + kTiny + " --set model.topk_method=group_limited_greedy", "[--set]: model.topk_method");
  refused("execute " + kTiny + " --set model.qk_rope_head_dim=0", "[--set]: model.qk_rope_head_dim");
  refused("execute " + repo("scenarios/deepseek-v2-h800.yaml"), "model.scoring_func");
}

TEST_CASE("hostile: command-line mistakes are one line", "[hostile]") {
  refused("execute " + kTiny + " --steps 0", "<command line>: --steps");
  refused("execute " + kTiny + " --steps many", "--steps");
  refused("describe", "<command line>: ");
  refused("frobnicate", "<command line>: ");
  for (const char* lr : {"nan", "inf", "-1e30"}) refused("execute " + kTiny + " --lr=" + std::string(lr), "--lr");
  refused("describe " + kTiny + " --seq-len 8192", "--seq-len");
  // Refused before the run, not after it: a missing folder for the trace.
  refused("execute " + kTiny + " --trace /nonexistent-dir/t.json", "--trace: cannot write");
  // A value from --set that breaks a rule of another key names the override.
  refused("describe " + kTiny + " --set batch.global_sequences=16", "[with --set batch.global_sequences=16]: schedule.kind");
}

TEST_CASE("hostile: a key's documented maximum is accepted", "[hostile]") {
  const Outcome o = hostile("describe " + kTiny + " --set routing.seed=4611686018427387904");
  INFO(o.err);
  CHECK(o.code == 0);
  refused("describe " + kTiny + " --set routing.seed=4611686018427387905", "routing.seed: must be in");
}

TEST_CASE("hostile: output that cannot be written fails in one line", "[hostile]") {
  // Files: written whole then renamed (common/write_file.h), a full device refused.
  refused("schedule " + kTiny + " --svg /dev/full", "cannot write");
  refused("schedule " + kTiny + " --svg /no/such/folder/x.svg", "cannot write");
  refused("keys --out /dev/full", "cannot write");
  TempDir dir("tandem-hostile");
  const std::string err = dir.file("stderr");
  for (const std::string& args : {"describe " + kTiny, "describe " + kTiny + " --json"}) {
    INFO("tandem " << args << " > /dev/full");
    const tandem::ProcessRun r = tandem::run_process(std::string(TANDEM_BINARY) + " " + args + " >/dev/full 2>" + err);
    std::ifstream in(err);
    std::stringstream s;
    s << in.rdbuf();
    const std::string text = s.str();
    CHECK(r.code == 1);
    CHECK(text.rfind("tandem: error: <stdout>: cannot write", 0) == 0);
    CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  }
}
