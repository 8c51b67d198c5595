// The CLI contract under random input, through the real tandem binary: random subcommands,
// options, --set overrides and values (hostile numbers, wrong types, YAML structures, aliases)
// on the shipped small scenarios. Every run must end in exit 0 with output (valid JSON under
// --json), or in exit 2 or 3 with exactly one line `tandem: error: ...` on stderr — never a
// signal, an "internal error" (exit 1), a hang or a run over its memory bound (each child runs
// under `ulimit -v` 2 GiB — 8 GiB for execute's threads — and a 20 s timeout, 60–120 s for keys,
// sweep, plan and execute; the limit is left out in a sanitizer build).
//
// Classes: describe, schedule, simulate and keys with random options; a shipped scenario file with
// random edits (values, lines, truncation, junk bytes); sweep, plan (kept to a few candidates) and
// execute. sweep and plan may also exit 1 with one line naming the first of their runs that
// failed. Each case's wall time and (with /usr/bin/time) peak memory go into a per-class table.
//
// Seeded: TANDEM_FUZZ_SEED (default 1) and TANDEM_FUZZ_CASES (default 2000, what CI runs) make
// a run reproducible; TANDEM_FUZZ_JOBS runs cases in parallel, TANDEM_FUZZ_REPORT writes the
// table to a file, TANDEM_FUZZ_BINARY runs another tandem binary. A breach prints the command to
// replay.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/signed_index.h"
#include "common/subprocess.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using tandem::idx;

using tandem::test::repo;

namespace {

// The address space a case may use (ulimit -v, KiB); none in a sanitizer build, whose shadow
// memory reserves terabytes.
std::string limit(long kib) {
#if defined(__SANITIZE_ADDRESS__)
  (void)kib;
  return "";
#else
  return "ulimit -v " + std::to_string(kib) + " && ";
#endif
}

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
    "routing.model", "routing.skew", "routing.histogram", "routing.seed", "routing.noise", "faults.slow_gpus",
    "faults.slow_speed", "faults.failed_planes", "faults.failed_nics", "faults.failed_spines", "faults.slow_nics", "faults.nic_speed",
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

// What a case exercises, for the summary table: a subcommand, or a mutated scenario file.
const std::vector<std::string> kClasses = {"describe", "schedule", "simulate", "keys", "card", "sweep", "plan", "execute"};

struct Case {
  std::string cls;
  std::string args;
  std::string card;  // a mutated scenario's text, written to the case's file first ("" for none)
  bool json = false;
  int timeout_s = 20;
  long memory_kib = 2L << 20;  // 2 GiB of address space
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A shipped scenario, its relative paths made absolute (the copy lives in a temp directory), with
// one to three random edits: a value replaced, a line deleted, duplicated, swapped or re-indented,
// the text truncated, or junk bytes inserted.
std::string mutated_card(std::mt19937_64& rng, const std::string& scenario) {
  auto pick = [&](const auto& v) -> const auto& { return v[rng() % v.size()]; };
  std::string text = read_text(repo(scenario));
  for (size_t at = text.find("../"); at != std::string::npos; at = text.find("../", at)) {
    text.replace(at, 3, repo(""));  // the scenarios' "../" is the repository's root
    at += repo("").size();
  }
  std::vector<std::string> lines;
  for (size_t b = 0, e; b < text.size(); b = e + 1) {
    e = text.find('\n', b);
    if (e == std::string::npos) e = text.size();
    lines.push_back(text.substr(b, e - b));
  }
  const int edits = 1 + static_cast<int>(rng() % 3);
  for (int k = 0; k < edits && !lines.empty(); ++k) {
    const size_t i = rng() % lines.size(), j = rng() % lines.size();
    switch (rng() % 7) {
      case 0: {  // a value replaced
        const size_t colon = lines[i].find(": ");
        if (colon != std::string::npos) lines[i] = lines[i].substr(0, colon + 2) + pick(kValues);
        break;
      }
      case 1: lines.erase(lines.begin() + static_cast<ptrdiff_t>(i)); break;
      case 2: lines.insert(lines.begin() + static_cast<ptrdiff_t>(i), lines[i]); break;
      case 3: std::swap(lines[i], lines[j]); break;
      case 4: lines[i] = std::string(rng() % 5, ' ') + lines[i]; break;
      case 5: lines.resize(i); break;  // truncated
      default: {                       // junk bytes
        std::string junk;
        for (int n = 1 + static_cast<int>(rng() % 8); n > 0; --n) junk += static_cast<char>(rng() % 256);
        lines[i].insert(rng() % (lines[i].size() + 1), junk);
      }
    }
  }
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

Case random_case(std::mt19937_64& rng, const std::string& card_path, const std::string& dir) {
  auto pick = [&](const auto& v) -> const auto& { return v[rng() % v.size()]; };
  auto sets = [&](int most) {
    std::string a;
    for (int i = static_cast<int>(rng() % static_cast<unsigned>(most + 1)); i > 0; --i)
      a += " --set " + quote(pick(kKeys) + "=" + pick(kValues));
    return a;
  };
  auto values = [&] { return pick(kValues) + (rng() % 2 ? "," + pick(kValues) : std::string()); };
  // Half of the searches vary a key the tiny scenarios take, so that they run, not only refuse.
  const std::vector<std::string> kGoodVaries = {"comm.sms=10,20", "comm.node_limit=2,4", "plan.dp_overlap=true,false",
                                                "routing.noise=0,0.1", "routing.seed=1,2"};
  auto vary = [&] { return rng() % 2 ? pick(kGoodVaries) : pick(kKeys) + "=" + values(); };
  Case c;
  const int roll = static_cast<int>(rng() % 1000);
  const std::string shipped = pick(kScenarios);
  std::string scenario = repo(shipped);
  if (roll < 250) {  // a mutated scenario file, through one of the commands that read it
    c.cls = "card";
    c.card = mutated_card(rng, shipped);
    scenario = card_path;
    c.args = pick(std::vector<std::string>{"describe ", "schedule ", "simulate "}) + scenario;
  } else if (roll < 450) {
    c.cls = "describe";
    c.args = "describe " + scenario + sets(3);
  } else if (roll < 620) {
    c.cls = "schedule";
    c.args = "schedule " + scenario + sets(3);
  } else if (roll < 800) {
    c.cls = "simulate";
    c.args = "simulate " + scenario + " --fidelity " +
             (rng() % 4 ? "auto" : pick(std::vector<std::string>{"replicated", "grouped", "exact", ""})) + sets(3);
  } else if (roll < 850) {
    c.cls = "keys";
    c.args = "keys";
    c.timeout_s = 60;  // it loads every shipped scenario, the 2048-GPU ones included
    if (rng() % 2) c.args += " --check " + repo("docs/card-keys.md");
  } else if (roll < 930) {
    c.cls = "sweep";
    c.args = "sweep " + scenario + " --vary " + quote(vary()) + sets(2);
    if (rng() % 3 == 0) c.args += " --csv " + dir + "/sweep.csv";
    c.timeout_s = 60;
  } else if (roll < 985) {
    // A plan search kept to a few candidates: every default axis fixed, one key varied.
    c.cls = "plan";
    c.args = "plan " + repo("scenarios/tiny-sim-128.yaml") +
             " --fix plan.pp=4 --fix plan.ep=32 --fix batch.micro_batch_sequences=1 --fix schedule.kind=dualpipe"
             " --fix comm.sms=20 --fix plan.dp_overlap=false --vary " + quote(vary()) + sets(1);
    if (rng() % 3 == 0) c.args += " --top " + pick(std::vector<std::string>{"1", "0", "-3", "x"});
    if (rng() % 3 == 0) c.args += " --csv " + dir + "/plan.csv";
    c.timeout_s = 120;
  } else {
    c.cls = "execute";
    c.args = "execute " + scenario + (rng() % 3 ? sets(2) : std::string());
    if (rng() % 2) c.args += " --numerics " + pick(std::vector<std::string>{"fp32", "bf16", "fp8", "fp4", ""});
    if (rng() % 3 == 0) c.args += " --lr " + quote(pick(kValues));
    if (rng() % 4 == 0) c.args += " --backend " + pick(std::vector<std::string>{"cpu", "cuda", "tpu"});
    c.timeout_s = 120;
    // Its rank threads each reserve a malloc arena and a stack: address space, not memory, so
    // the bound is looser than the peak RSS the table reports.
    c.memory_kib = 8L << 20;
  }
  if (rng() % 8 == 0) c.args += " " + pick(std::vector<std::string>{"--nosuch", "--set", "--set =", "--json --json", "--tokens nan",
                                                                     "--tokens -5", "--trace /no/such/dir/t.json", "extra"});
  c.json = rng() % 2;
  if (c.json) c.args += " --json";
  return c;
}

struct Outcome {
  int code = -1;
  bool ok = false;
  double wall_s = 0;
  long peak_kb = -1;  // the case's peak RSS (/usr/bin/time), -1 when not measured
  std::string stderr_text;
};

bool have_time_tool() { return std::ifstream("/usr/bin/time").good(); }

// Runs one case in its own scratch directory `dir` and checks the contract.
Outcome run_case(const Case& c, const std::string& dir, bool measure) {
  const std::string out = dir + "/out", err = dir + "/err", mem = dir + "/mem";
  if (!c.card.empty()) std::ofstream(dir + "/case.yaml", std::ios::binary) << c.card;
  const std::string timer = measure ? "/usr/bin/time -q -f %M -o " + mem + " " : "";
  const auto t0 = std::chrono::steady_clock::now();
  static const std::string binary = [] {
    const char* b = std::getenv("TANDEM_FUZZ_BINARY");  // a copy, for a long run beside a rebuild
    return std::string(b && *b ? b : TANDEM_BINARY);
  }();
  const tandem::ProcessRun r = tandem::run_process(limit(c.memory_kib) + timer + "timeout -s KILL " + std::to_string(c.timeout_s) + " " +
                                                   binary + " " + c.args + " >" + out + " 2>" + err);
  Outcome o;
  o.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  o.code = r.code;
  const std::string stdout_text = read_text(out);
  o.stderr_text = read_text(err);
  if (measure) {
    // /usr/bin/time's last line is the peak (a killed child adds a "Command terminated" line).
    std::string text = read_text(mem), last;
    for (size_t b = 0, e; b < text.size(); b = e + 1) {
      e = text.find('\n', b);
      if (e == std::string::npos) e = text.size();
      if (e > b) last = text.substr(b, e - b);
    }
    o.peak_kb = std::strtol(last.c_str(), nullptr, 10);
  }
  const bool one_line = o.stderr_text.rfind("tandem: ", 0) == 0 && std::count(o.stderr_text.begin(), o.stderr_text.end(), '\n') == 1;
  if (o.code == 0) o.ok = !stdout_text.empty() && (!c.json || !nlohmann::json::parse(stdout_text, nullptr, false).is_discarded());
  if (o.code == 2 || o.code == 3) o.ok = o.stderr_text.rfind("tandem: error: ", 0) == 0 && one_line;
  // sweep and plan: exit 1 names the first of their simulations that failed, in one line.
  if (o.code == 1 && (c.cls == "sweep" || c.cls == "plan")) o.ok = one_line;
  return o;
}

}  // namespace

// Cases are drawn in order from the seed, then run on TANDEM_FUZZ_JOBS workers (default 1), so a
// run's cases do not depend on the number of workers.
TEST_CASE("fuzz: random command lines keep the CLI's contract", "[cli_fuzz]") {
  const long cases = env_or("TANDEM_FUZZ_CASES", 2000), seed = env_or("TANDEM_FUZZ_SEED", 1);
  const long jobs = std::max(1L, env_or("TANDEM_FUZZ_JOBS", 1));
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  tandem::test::TempDir dir("tandem-fuzz");
  std::vector<std::string> scratch;
  for (long w = 0; w < jobs; ++w) {
    scratch.push_back(dir.file("w" + std::to_string(w)));
    std::filesystem::create_directories(scratch.back());
  }
  // Card cases name the file of the worker that runs them: worker w runs cases w, w + jobs, ...
  std::vector<Case> all;
  for (long i = 0; i < cases; ++i)
    all.push_back(random_case(rng, scratch[idx(i % jobs)] + "/case.yaml", scratch[idx(i % jobs)]));
  const bool measure = have_time_tool();
  std::vector<Outcome> outcomes(all.size());
  std::vector<std::thread> workers;
  for (long w = 0; w < jobs; ++w)
    workers.emplace_back([&, w] {
      for (size_t i = idx(w); i < all.size(); i += idx(jobs))
        outcomes[i] = run_case(all[i], scratch[idx(w)], measure);
    });
  for (auto& t : workers) t.join();

  int breaches = 0;
  struct Stats {
    long n = 0;
    std::map<int, long> codes;
    double worst_wall = 0, worst_refusal_wall = 0;
    long worst_wall_case = -1, peak_kb = -1, peak_case = -1, refusal_peak_kb = -1;
  };
  std::map<std::string, Stats> by_class;
  for (size_t i = 0; i < all.size(); ++i) {
    const Outcome& o = outcomes[i];
    Stats& st = by_class[all[i].cls];
    ++st.n;
    ++st.codes[o.code];
    if (o.wall_s > st.worst_wall) st.worst_wall = o.wall_s, st.worst_wall_case = static_cast<long>(i);
    if (o.peak_kb > st.peak_kb) st.peak_kb = o.peak_kb, st.peak_case = static_cast<long>(i);
    if (o.code != 0) {  // a refusal (or failure): what the one-line contract costs at worst
      st.worst_refusal_wall = std::max(st.worst_refusal_wall, o.wall_s);
      st.refusal_peak_kb = std::max(st.refusal_peak_kb, o.peak_kb);
    }
    if (!o.ok) {
      ++breaches;
      UNSCOPED_INFO("case " << i << " (seed " << seed << ", " << all[i].cls << "): exit " << o.code << ": tandem " << all[i].args
                            << "\n  stderr: " << o.stderr_text.substr(0, 400));
    }
  }
  std::string table = std::to_string(cases) + " cases (seed " + std::to_string(seed) + ")\n";
  table += "| class | cases | outcomes (exit: count) | worst wall | worst peak memory | refusals: worst wall, peak memory |\n"
           "|---|---|---|---|---|---|\n";
  for (const std::string& cls : kClasses) {
    const auto it = by_class.find(cls);
    if (it == by_class.end()) continue;
    const Stats& st = it->second;
    std::string codes;
    for (const auto& [code, n] : st.codes) codes += (codes.empty() ? "" : ", ") + std::to_string(code) + ": " + std::to_string(n);
    char line[400];
    std::snprintf(line, sizeof line, "| %s | %ld | %s | %.2f s (case %ld) | %s | %.2f s, %s |\n", cls.c_str(), st.n, codes.c_str(),
                  st.worst_wall, st.worst_wall_case,
                  st.peak_kb < 0 ? "not measured" : (std::to_string(st.peak_kb / 1024) + " MB (case " + std::to_string(st.peak_case) + ")").c_str(),
                  st.worst_refusal_wall, st.refusal_peak_kb < 0 ? "not measured" : (std::to_string(st.refusal_peak_kb / 1024) + " MB").c_str());
    table += line;
  }
  WARN(table);
  if (const char* path = std::getenv("TANDEM_FUZZ_REPORT"); path && *path) std::ofstream(path) << table;
  CHECK(breaches == 0);
}
