// tandem calibrate's derivation (sim/calibrate.h), the calibrated cost model's rules (SM budget,
// comm.sms trade-off, DeepEP's alone case) and the stage balancer, without SimGrid.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "common/chrome_trace.h"
#include "common/signed_index.h"
#include "common/subprocess.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"
#include "scenarios/task_cost.h"
#include "scenarios/task_work.h"
#include "sim/all_to_all.h"
#include "sim/calibrate.h"
#include "sim/compute_cost.h"
#include "sim/kernel_rules.h"
#include "topologies/topology.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

Scenario load(const std::string& rel, const std::vector<std::string>& overrides = {}) {
  auto s = load_scenario(repo(rel), overrides);
  INFO((s.ok() ? "" : s.error().message()));
  REQUIRE(s.ok());
  return s.value();
}

KernelRules shipped_rules() {
  auto r = load_kernel_rules(repo("sim/calibration/kernel-rules.yaml"));
  REQUIRE(r.ok());
  return r.value();
}

// The excerpt of DeepSeek's trace (tests/data/README.md) with whole phases only: its attn(B) holds
// only the first kernels of the phase, so that annotation is dropped (its kernels then belong to
// no task kind and are left out of the derivation).
ChromeTrace excerpt_whole_phases() {
  auto t = read_chrome_trace(repo("tests/data/train-excerpt.json"));
  REQUIRE(t.ok());
  ChromeTrace trace = t.value();
  trace.ranges.erase(std::remove_if(trace.ranges.begin(), trace.ranges.end(),
                                    [](const TraceRange& r) { return r.name == "attn(B)"; }),
                     trace.ranges.end());
  return trace;
}

const KindFigure& kind(const CalibrationDerivation& d, const std::string& k) {
  auto it = std::find_if(d.kinds.begin(), d.kinds.end(), [&](const KindFigure& f) { return f.kind == k; });
  REQUIRE(it != d.kinds.end());
  return *it;
}

Calibration base_of(const Scenario& s) {
  std::vector<std::string> complete;
  for (const std::string& f : s.calibration) {
    auto c = load_calibration(f);
    REQUIRE(c.ok());
    if (!c.value().overlay) complete.push_back(f);
  }
  return resolve_calibration(complete);
}

TaskWork work_of(const Scenario& s, const Workload& w, TaskKind k, int block) {
  Task t;
  t.kind = k;
  t.block = block;
  t.stream = (k == TaskKind::dispatch_f || k == TaskKind::combine_f || k == TaskKind::dispatch_b || k == TaskKind::combine_b)
                 ? Stream::comm
                 : Stream::compute;
  return task_work(s, w, Program{}, 0, t);
}

int first_moe_block(const Workload& w) {
  for (size_t b = 0; b < w.blocks.size(); ++b)
    if (w.blocks[b].kind == BlockKind::moe_layer) return static_cast<int>(b);
  FAIL("no MoE layer");
  return -1;
}

}  // namespace

TEST_CASE("phase names map to task kinds", "[calibrate]") {
  TaskKind k;
  REQUIRE(phase_task_kind("attn(F)", &k));
  CHECK(k == TaskKind::attn_f);
  REQUIRE(phase_task_kind("combine(B)", &k));
  CHECK(k == TaskKind::combine_b);
  REQUIRE(phase_task_kind("mlp_w", &k));
  CHECK(k == TaskKind::mlp_w);
  CHECK_FALSE(phase_task_kind("ProfilerStep#1", &k));
  CHECK_FALSE(phase_task_kind("attn(X)", &k));
}

TEST_CASE("a calibration derived from DeepSeek's trace reproduces its per-kind times (round trip)", "[calibrate]") {
  const Scenario s = load("scenarios/deepseek-v3-2048.yaml");
  auto d = derive_calibration(s, base_of(s), {excerpt_whole_phases()}, shipped_rules());
  INFO((d.ok() ? "" : d.error().message()));
  REQUIRE(d.ok());
  const CalibrationDerivation& c = d.value();
  CHECK(c.classified_us == Approx(c.kernel_us));
  CHECK(c.unclassified.empty());
  CHECK(c.gemm_sms_measured == 112);  // DeepGEMM's persistent kernels: 132 - 20 communication SMs
  CHECK(c.kernel_floor_us > 0);
  CHECK(c.launch_gap_us == Approx(2.0));
  // Known figures of the excerpt: attn(F) holds 69 kernels; its q_a_proj GEMM ran 101 µs.
  CHECK(kind(c, "attn_f").kernels == 69);
  CHECK(kind(c, "dispatch_f").instances == 2);
  auto q_a = std::find_if(c.gemms.begin(), c.gemms.end(), [](const GemmFigure& g) { return g.name == "q_a_proj.fprop"; });
  REQUIRE(q_a != c.gemms.end());
  CHECK(q_a->measured_us == Approx(101.0));
  CHECK(q_a->row.tflops == Approx(2.0 * 4096 * 1536 * 7168 / 101e-6 / 1e12));
  CHECK(q_a->row.sms == 112);
  // The round trip: the overlay laid over the base reproduces each measured kind within 5%.
  for (const KindFigure& k : c.kinds) {
    INFO(k.kind << ": measured " << k.measured_us << " us, model after " << k.model_after_us);
    CHECK(k.model_after_us == Approx(k.measured_us).epsilon(0.05));
  }
  // What the overlay file says loads back as the same figures.
  const tandem::test::TempDir dir;
  const std::string path = dir.write("overlay.yaml", c.yaml());
  auto back = load_calibration(path);
  INFO((back.ok() ? "" : back.error().message()));
  REQUIRE(back.ok());
  CHECK(back.value().overlay);
  CHECK(back.value().gemms.size() == c.result.gemms.size());
  CHECK(back.value().all_to_all.notify_us[0] == Approx(c.result.all_to_all.notify_us[0]).epsilon(1e-3));
  for (size_t i = 0; i < c.result.family_efficiency.size(); ++i)
    CHECK(back.value().family_efficiency[i] == Approx(c.result.family_efficiency[i]).epsilon(1e-3));
}

TEST_CASE("the committed calibration holds DeepSeek's trace per task kind within 5%", "[calibrate]") {
  // sim/calibration/deepseek-v3-h800-train.yaml records what `tandem calibrate` measured and the
  // model's time after it (scripts/calibrate-deepseek-v3.sh re-derives it from the full trace).
  auto c = parse_card_file(repo("sim/calibration/deepseek-v3-h800-train.yaml"));
  const YAML::Node kinds = c["measured"]["task_kinds"];
  REQUIRE(kinds.size() == 10);
  CHECK(c["measured"]["classified_share"].as<double>() >= 0.98);
  for (const auto& k : kinds) {
    const double measured = k.second["measured_us"].as<double>(), model = k.second["model_after_us"].as<double>();
    INFO(k.first.as<std::string>());
    CHECK(model == Approx(measured).epsilon(0.05));
  }
}

TEST_CASE("the SM budget: GEMMs run on the SMs communication leaves them, in every slot", "[calibrate]") {
  const Scenario s = load("scenarios/deepseek-v3-2048.yaml");
  CHECK(s.gemm_sms() == 132 - 20);
  const Scenario no_ep = load("scenarios/tiny-1f1b.yaml", {"plan.ep=1"});
  CHECK(no_ep.gemm_sms() == no_ep.cluster.gpu.sms);  // no all-to-all: compute has the whole GPU
  const Workload w = scenario_workload(s);
  const StagePartition part = scenario_partition(s, w);
  const Schedule sch = make_schedule(s.schedule.kind, 16, static_cast<int>(s.micro_batches()));
  const Program prog = build_program(sch, w, part);
  const ComputeCostModel costs(s.cluster.gpu, resolve_calibration(s.calibration));
  // An mlp_b of a lone B slot and one of an overlapped F&B slot (whose dispatch may start at the
  // same instant) take the same time: the time on 112 SMs.
  const int rank = 7;
  double lone = -1, overlapped = -1;
  for (const Task& t : prog.tasks[idx(rank)]) {
    if (t.kind != TaskKind::mlp_b || w.blocks[idx(t.block)].kind != BlockKind::moe_layer) continue;
    const double secs = task_cost(s, prog, rank, t, task_work(s, w, prog, rank, t), costs).seconds;
    (in_overlapped_slot(prog, rank, t) ? overlapped : lone) = secs;
  }
  REQUIRE(lone > 0);
  REQUIRE(overlapped > 0);
  CHECK(lone == Approx(overlapped));
  const TaskWork mlp_b = work_of(s, w, TaskKind::mlp_b, first_moe_block(w));
  CHECK(lone == Approx(costs.pass_seconds(mlp_b.compute, true, 112)));
  CHECK(lone > costs.pass_seconds(mlp_b.compute, true, 132));
}

TEST_CASE("comm.sms trades all-to-all speed against GEMM speed", "[calibrate]") {
  auto at = [](int sms) {
    const Scenario s = load("scenarios/deepseek-v3-2048.yaml", {"comm.sms=" + std::to_string(sms)});
    const Workload w = scenario_workload(s);
    const ComputeCostModel costs(s.cluster.gpu, resolve_calibration(s.calibration));
    Task mlp;
    mlp.kind = TaskKind::mlp_f;
    mlp.block = first_moe_block(w);
    Task a2a = mlp;
    a2a.kind = TaskKind::dispatch_f;
    a2a.stream = Stream::comm;
    const Program none;
    return std::make_pair(task_cost(s, none, 0, mlp, task_work(s, w, none, 0, mlp), costs).seconds,
                          task_cost(s, none, 0, a2a, task_work(s, w, none, 0, a2a), costs).transfer_scale);
  };
  const auto [gemm10, a2a10] = at(10);
  const auto [gemm20, a2a20] = at(20);
  const auto [gemm32, a2a32] = at(32);
  CHECK(gemm10 < gemm20);
  CHECK(gemm20 < gemm32);
  CHECK(a2a10 == Approx(2.0));  // 10 SMs drive half the bandwidth 20 SMs saturate
  CHECK(a2a20 == Approx(1.0));
  CHECK(a2a32 == Approx(1.0));  // beyond saturation, more SMs only slow the GEMMs
}

TEST_CASE("the alone-case all-to-all reproduces DeepEP's published EP64 bandwidth", "[calibrate]") {
  // DeepEP normal kernels, H800, EP64 internode, 4096 tokens: 51 GB/s dispatch and 50 GB/s combine
  // of "logical" bytes ((token, node) pairs including the sender's node x bytes per copy).
  const Scenario s = load("scenarios/deepseek-v3-2048.yaml");
  const Workload w = scenario_workload(s);
  const Calibration base = resolve_calibration({repo("sim/calibration/h800-deepgemm.yaml")});
  const int block = first_moe_block(w);
  const AllToAll& a = w.blocks[idx(block)].all_to_all;
  ClusterCard card = s.cluster;
  card.nodes = 8;
  const Topology topo(card);
  const EpLayout layout{64, 64, 8};
  for (auto [bytes, gbps] : {std::pair{a.dispatch_bytes_per_copy, 51.0}, std::pair{a.combine_bytes_per_copy, 50.0}}) {
    const A2AGroup g(layout, 0, a.tokens, bytes, w.blocks[idx(block)].routing);
    const A2APlan plan = plan_all_to_all(layout, topo, g, base.all_to_all.ib_efficiency, base.all_to_all.nvlink_efficiency);
    const double deepep = a.tokens * a.dest_nodes_per_token * bytes / (gbps * 1e9);
    INFO("bytes per copy " << bytes << ": model " << plan.seconds[0] * 1e3 << " ms, DeepEP " << deepep * 1e3 << " ms");
    CHECK(plan.seconds[0] == Approx(deepep).epsilon(0.02));
  }
}

TEST_CASE("calibrating on tandem's own execute trace gives task-level scales", "[calibrate]") {
  const tandem::test::TempDir dir;
  const std::string trace = dir.file("exec.json");
  const ProcessRun r = run_process(std::string(TANDEM_BINARY) + " execute " + repo("scenarios/tiny-1f1b.yaml") +
                                   " --backend cpu --steps 1 --trace " + trace + " 2>&1");
  INFO(r.out);
  REQUIRE(r.code == 0);
  auto t = read_chrome_trace(trace);
  REQUIRE(t.ok());
  CHECK(t.value().format == "tandem");
  const Scenario s = load("scenarios/tiny-1f1b.yaml");
  auto d = derive_calibration(s, base_of(s), {t.value()}, shipped_rules());
  INFO((d.ok() ? "" : d.error().message()));
  REQUIRE(d.ok());
  const CalibrationDerivation& c = d.value();
  CHECK(c.classified_us == Approx(c.kernel_us));
  for (const char* k : {"attn_f", "mlp_f", "attn_b", "mlp_b"}) {
    INFO(k);
    REQUIRE(c.result.task_time_scale.count(k));
    CHECK(c.result.task_time_scale.at(k) > 0);
    CHECK(kind(c, k).model_after_us == Approx(kind(c, k).measured_us).epsilon(1e-6));
  }
}

TEST_CASE("calibrate: bad traces and foreign JSON are input errors (exit 2)", "[calibrate]") {
  const std::string scenario = " --scenario " + repo("scenarios/deepseek-v3-2048.yaml");
  const std::string tandem = std::string(TANDEM_BINARY) + " calibrate ";
  ProcessRun r = run_process(tandem + "/dev/null" + scenario + " 2>&1");
  CHECK(r.code == 2);
  CHECK(r.out.find("/dev/null") != std::string::npos);
  const tandem::test::TempDir dir;
  const std::string path = dir.write("foreign.json", R"({"name": "not a trace", "events": []})");
  r = run_process(tandem + path + scenario + " 2>&1");
  CHECK(r.code == 2);
  CHECK(r.out.find("traceEvents") != std::string::npos);
  // A trace whose kernels fall in no phase named after a task kind calibrates nothing.
  std::ofstream(path) << R"({"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 2, "pid": 0,
                                "args": {"stream": 7, "correlation": 1}}]})";
  r = run_process(tandem + path + scenario + " 2>&1");
  CHECK(r.code == 2);
  CHECK(r.out.find("nothing to calibrate") != std::string::npos);
}

TEST_CASE("the stage balancer never loses to the FLOPs-balanced partition", "[calibrate]") {
  for (const char* rel : {"scenarios/deepseek-v3-2048.yaml", "scenarios/deepseek-v3-1f1b.yaml", "scenarios/tiny-sim-128.yaml"}) {
    const Scenario s = load(rel);
    const Workload w = scenario_workload(s);
    const StagePartition balanced = scenario_partition(s, w);
    const StagePartition by_flops = partition_stages(w, s.stages(), {}, s.file, "plan.pp");
    INFO(rel);
    CHECK(estimate_step_seconds(s, w, balanced) <= estimate_step_seconds(s, w, by_flops) * (1 + 1e-9));
    int64_t layers = 0;
    for (const Stage& st : balanced.stages) layers += st.layers;
    CHECK(layers == s.model.num_hidden_layers);
  }
  // A manual partition is taken as written.
  const Scenario m = load("scenarios/deepseek-v3-2048.yaml", {"schedule.stage_layers=[4,4,4,4,4,4,4,4,4,4,4,4,4,4,4,1]"});
  const StagePartition p = scenario_partition(m, scenario_workload(m));
  CHECK(p.stages.back().layers == 1);
  CHECK(p.stages.front().layers == 4);
}
