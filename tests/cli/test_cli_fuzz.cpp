// The CLI contract under random input, through the real tandem binary: random subcommands,
// options, --set overrides and values (hostile numbers, wrong types, YAML structures, aliases)
// on the shipped small scenarios. Every run must end in exit 0 with output (valid JSON under
// --json), or in exit 2 or 3 with exactly one line `tandem: error: ...` on stderr — never a
// signal, an "internal error" (exit 1), a hang or a run over its memory bound (each child runs
// under `ulimit -v` 2 GiB and a 20 s timeout; the limit is left out in a sanitizer build).
//
// Seeded: TANDEM_FUZZ_SEED (default 1) and TANDEM_FUZZ_CASES (default 2000, what CI runs) make
// a run reproducible; a breach prints the command to replay.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using tandem::test::repo;

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr const char* kLimit = "";
#else
constexpr const char* kLimit = "ulimit -v 2097152 && ";
#endif

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

long env_or(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtol(v, nullptr, 10) : fallback;
}

// The keys a user sets most, and every section: where a mistake would hit.
const std::vector<std::string> kKeys = {
    "plan.pp", "plan.ep", "plan.dp_overlap", "gpus", "batch.global_sequences", "batch.seq_len",
    "batch.micro_batch_sequences", "schedule.kind", "schedule.stage_layers", "comm.sms", "comm.node_limit",
    "routing.model", "routing.skew", "routing.histogram", "routing.seed", "routing.noise", "faults.slow_gpus", "faults.slow_speed",
    "faults.slow_fraction", "precision.recipe", "precision.act_tile", "recompute.swiglu", "cluster.nodes",
    "cluster.nic_gbps", "cluster.gpu.fp8_tflops", "cluster.gpu.hbm_gbytes", "cluster.gpu.sms",
    "model.hidden_size", "model.num_hidden_layers", "model.n_routed_experts", "model.num_experts_per_tok",
    "model.n_group", "model.topk_group", "model.vocab_size", "model.rope_scaling", "calibration", "name",
    "plan", "batch", "model", "cluster", "nosuch.key", "plan.nosuch"};
const std::vector<std::string> kValues = {
    "0", "1", "2", "3", "4", "8", "64", "-1", "-0", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "0.5", "1.5",
    "99999999999999999999", "9223372036854775807", "abc", "''", "true", "false", "null", "~", "[]", "[1, 2]",
    "[1, [2]]", "{}", "{a: 1}", "{pp: 2, pp: 4}", "&a {x: *a}", "[&b [1], *b]", "dualpipe", "zb1p", "1f1b",
    "dualpipev", "skewed", "balanced", "bf16", "fp8_block", "/dev/zero", "/nonexistent.yaml", "\"\\u0000\"",
    "'a: b'", "!!binary AAAA", "0x10", "1_000", "+5", ".5", "5.", "1,2"};
const std::vector<std::string> kScenarios = {"scenarios/tiny-dualpipe.yaml", "scenarios/tiny-1f1b.yaml",
                                             "scenarios/tiny-dualpipev.yaml", "scenarios/tiny-sim-128.yaml"};

struct Case {
  std::string args;
  bool json = false;
};

Case random_case(std::mt19937_64& rng) {
  auto pick = [&](const auto& v) -> const auto& { return v[rng() % v.size()]; };
  Case c;
  const int kind = static_cast<int>(rng() % 10);
  const std::string scenario = repo(pick(kScenarios));
  if (kind < 4) c.args = "describe " + scenario;
  else if (kind < 7) c.args = "schedule " + scenario;
  else if (kind < 9) c.args = "simulate " + scenario + " --fidelity " + (rng() % 4 ? "auto" : pick(std::vector<std::string>{"replicated", "grouped", "exact", ""}));
  else c.args = "keys";
  if (kind == 9 && rng() % 2) c.args += " --check " + repo("docs/card-keys.md");
  const int sets = static_cast<int>(rng() % 4);
  for (int i = 0; i < sets && kind != 9; ++i) c.args += " --set " + quote(pick(kKeys) + "=" + pick(kValues));
  if (rng() % 8 == 0) c.args += " " + pick(std::vector<std::string>{"--nosuch", "--set", "--set =", "--json --json", "--tokens nan",
                                                                     "--tokens -5", "--trace /no/such/dir/t.json", "extra"});
  c.json = rng() % 2;
  if (c.json) c.args += " --json";
  return c;
}

}  // namespace

TEST_CASE("fuzz: random command lines keep the CLI's contract", "[cli_fuzz]") {
  const long cases = env_or("TANDEM_FUZZ_CASES", 2000), seed = env_or("TANDEM_FUZZ_SEED", 1);
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  tandem::test::TempDir dir("tandem-fuzz");
  const std::string out = dir.file("out"), err = dir.file("err");
  std::map<int, int> by_code;
  int breaches = 0;
  for (long i = 0; i < cases; ++i) {
    const Case c = random_case(rng);
    const tandem::ProcessRun r = tandem::run_process(std::string(kLimit) + "timeout -s KILL 20 " + TANDEM_BINARY + " " + c.args +
                                                     " >" + out + " 2>" + err);
    std::ifstream o(out), e(err);
    const std::string stdout_text((std::istreambuf_iterator<char>(o)), std::istreambuf_iterator<char>());
    const std::string stderr_text((std::istreambuf_iterator<char>(e)), std::istreambuf_iterator<char>());
    ++by_code[r.code];
    bool ok = false;
    if (r.code == 0) ok = !stdout_text.empty() && (!c.json || !nlohmann::json::parse(stdout_text, nullptr, false).is_discarded());
    if (r.code == 2 || r.code == 3)
      ok = stderr_text.rfind("tandem: error: ", 0) == 0 && std::count(stderr_text.begin(), stderr_text.end(), '\n') == 1;
    if (!ok) {
      ++breaches;
      UNSCOPED_INFO("case " << i << " (seed " << seed << "): exit " << r.code << ": tandem " << c.args << "\n  stderr: "
                            << stderr_text.substr(0, 400));
    }
  }
  std::string summary;
  for (const auto& [code, n] : by_code) summary += " exit " + std::to_string(code) + ": " + std::to_string(n) + ";";
  WARN(cases << " cases (seed " << seed << "):" << summary);
  CHECK(breaches == 0);
}
