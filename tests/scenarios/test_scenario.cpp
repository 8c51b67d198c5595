#include <catch2/catch.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "common/signed_index.h"
#include "scenarios/memory.h"
#include "scenarios/scenario.h"
#include "scenarios/stage_partition.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

const std::string kDefault = "scenarios/deepseek-v3-2048.yaml";

Scenario load_ok(const std::string& rel, const std::vector<std::string>& sets = {}) {
  auto r = load_scenario(repo(rel), sets);
  INFO(rel << ": " << (r.ok() ? "" : r.error().message()));
  REQUIRE(r.ok());
  return r.value();
}

InputError load_err(const std::vector<std::string>& sets, const std::string& rel) {
  auto r = load_scenario(repo(rel), sets);
  REQUIRE_FALSE(r.ok());
  return r.error();
}

InputError load_err(const std::vector<std::string>& sets) { return load_err(sets, kDefault); }

}  // namespace

TEST_CASE("every shipped scenario loads", "[scenario]") {
  for (const char* s : {"deepseek-v3-2048", "deepseek-v3-4096", "deepseek-v3-h200", "deepseek-v3-1f1b",
                        "deepseek-v2-1024", "tiny-dualpipe", "tiny-1f1b", "tiny-dualpipev", "tiny-sim-128",
                        "tiny-sim-128-straggler", "tiny-sim-128-measured-routing"})
    load_ok(std::string("scenarios/") + s + ".yaml");
}

TEST_CASE("the default scenario is the report's setup", "[scenario]") {
  const Scenario s = load_ok(kDefault);
  CHECK(s.gpus == 2048);
  CHECK(s.plan.pp == 16);
  CHECK(s.plan.dp == 128);
  CHECK(s.plan.ep == 64);
  CHECK(s.micro_batches() == 120);
  CHECK(s.schedule.kind == ScheduleKind::dualpipe);
  CHECK(s.comm.sms == 20);
  CHECK(s.comm.node_limit == 4);
  CHECK(s.tokens_per_step() == 15360.0 * 4096);
  CHECK(s.cluster.gpu.sms == 132);
  CHECK(s.model.num_hidden_layers == 61);
}

TEST_CASE("the stage partition keeps embedding first and head with MTP last", "[scenario]") {
  const Scenario s = load_ok(kDefault);
  const Workload w = scenario_workload(s);
  const StagePartition p = partition_stages(w, 16, {}, s.file, "plan.pp");
  REQUIRE(p.stages.size() == 16);
  CHECK(w.blocks[p.stages.front().first_block].kind == BlockKind::embedding);
  CHECK(w.blocks[p.stages.back().end_block - 1].kind == BlockKind::mtp);
  int64_t layers = 0;
  double max_cost = 0, total = 0;
  for (size_t i = 0; i < p.stages.size(); ++i) {
    layers += p.stages[i].layers;
    if (i > 0) CHECK(p.stages[i].first_block == p.stages[i - 1].end_block);
    max_cost = std::max(max_cost, p.stages[i].cost);
    total += p.stages[i].cost;
  }
  CHECK(layers == 61);
  CHECK(p.stages.back().end_block == w.blocks.size());
  // Balanced: the busiest stage within one layer's cost of the mean.
  CHECK(max_cost < total / 16 + w.blocks[10].model_flops());

  const StagePartition manual = partition_stages(w, 4, {15, 16, 16, 14}, s.file, "plan.pp");
  CHECK(manual.stages[0].layers == 15);
  CHECK(manual.stages[3].layers == 14);
}

TEST_CASE("memory per GPU of the default scenario", "[scenario]") {
  const Scenario s = load_ok(kDefault);
  const Workload w = scenario_workload(s);
  const StagePartition p = partition_stages(w, s.stages(), {}, s.file, "plan.pp");
  const auto mem = memory_per_rank(s, p);
  REQUIRE(mem.size() == 16);
  for (const auto& m : mem) {
    REQUIRE(m.stages.size() == 2);  // DualPipe: two stages per rank
    CHECK(m.stages[0] + m.stages[1] == 15);
    CHECK(m.in_flight[0] + m.in_flight[1] == 17);  // PP + 1 micro-batches
    CHECK(m.total() < 80e9);
    CHECK(m.total() > 20e9);
  }
  // ~3.4B parameters per GPU before optimizer sharding (reference §15).
  CHECK(mem[8].params / 1e9 == Approx(3.4).epsilon(0.15));
  // 1F1B keeps one copy of the parameters.
  const Scenario f = load_ok("scenarios/deepseek-v3-1f1b.yaml");
  const auto mf = memory_per_rank(f, partition_stages(scenario_workload(f), 16, {}, "", ""));
  CHECK(mf[0].in_flight[0] == 16);
  CHECK(mf[15].in_flight[0] == 1);
  CHECK(mf[8].params < mem[8].params * 0.6);
}

TEST_CASE("--set overrides scenario, model and cluster keys", "[scenario]") {
  // PP8 DualPipe doubles each stage: it needs ~99 GB on rank 0, so give it H200-sized HBM.
  CHECK(load_err({"plan.pp=8"}).key == "plan");
  Scenario s = load_ok(kDefault, {"plan.pp=8", "cluster.nic_gbps=800", "cluster.gpu.hbm_gbytes=141"});
  CHECK(s.plan.pp == 8);
  CHECK(s.plan.dp == 256);
  CHECK(s.micro_batches() == 60);
  CHECK(s.cluster.nic_gbps == 800);
  s = load_ok(kDefault, {"model.num_hidden_layers=31", "schedule.kind=1f1b"});
  CHECK(s.model.num_hidden_layers == 31);
  CHECK(s.schedule.kind == ScheduleKind::one_f_one_b);
  s = load_ok(kDefault, {"model=../models/deepseek-v2.yaml", "plan.ep=32", "comm.node_limit=3"});
  CHECK(s.model.name == "deepseek-v2");
  s = load_ok(kDefault, {"schedule.stage_layers=[3,4,4,4,4,4,4,4,4,4,4,4,4,4,4,2]"});
  CHECK(s.schedule.stage_layers.size() == 16);
}

TEST_CASE("bad scenarios: one error naming file, key and reason", "[scenario]") {
  InputError e = load_err({"plan.ppp=3"});
  CHECK(e.key == "plan.ppp");
  CHECK(e.reason == "unknown key");
  CHECK(e.file.find("[--set]") != std::string::npos);

  e = load_err({"plan.pp=sixteen"});
  CHECK(e.key == "plan.pp");
  CHECK(e.reason.find("whole number") != std::string::npos);

  e = load_err({"plan.pp=-2"});
  CHECK(e.key == "plan.pp");
  CHECK(e.reason.find("must be in") != std::string::npos);

  e = load_err({"plan.pp=7"});  // 2048 GPUs are not whole pipelines of 7
  CHECK(e.key == "plan.pp");
  CHECK(e.reason.find("pp x dp") != std::string::npos);

  e = load_err({"plan.ep=256"});  // EP groups span DP replicas: dp 128 < 256
  CHECK(e.key == "plan.ep");
  CHECK(e.reason.find("divide dp") != std::string::npos);

  e = load_err({"plan.ep=48"});
  CHECK(e.key == "plan.ep");
  CHECK(e.reason.find("divide") != std::string::npos);

  e = load_err({"plan.pp=64", "plan.ep=32", "schedule.kind=1f1b", "batch.global_sequences=2048"});
  CHECK(e.key == "plan.pp");
  CHECK(e.reason.find("cannot be split") != std::string::npos);

  e = load_err({"batch.global_sequences=3840"});  // 30 micro-batches < 2 x PP
  CHECK(e.key == "schedule.kind");
  CHECK(e.reason.find("DualPipe") != std::string::npos);

  e = load_err({"batch.global_sequences=15488"});  // 121 micro-batches: odd
  CHECK(e.key == "schedule.kind");

  e = load_err({"batch.global_sequences=15000"});
  CHECK(e.key == "batch.global_sequences");

  e = load_err({"cluster.gpu.hbm_gbytes=40"});
  CHECK(e.key == "plan");
  CHECK(e.reason.find("HBM") != std::string::npos);

  e = load_err({"cluster.nic_gbps=-5"});
  CHECK(e.key == "cluster.nic_gbps");
  CHECK(e.file.find("[--set]") != std::string::npos);

  e = load_err({"model.hidden_size=abc"});
  CHECK(e.key == "model.hidden_size");

  e = load_err({"plan.pp"});
  CHECK(e.reason.find("key=value") != std::string::npos);

  e = load_err({"gpus.x=3"});
  CHECK(e.reason.find("single value") != std::string::npos);

  e = load_err({"model=../models/missing.yaml"});
  CHECK(e.key == "model");
  CHECK(e.reason.find("no card file") != std::string::npos);

  e = load_err({"schedule.stage_layers=[4,4]"});
  CHECK(e.key == "schedule.stage_layers");

  e = load_err({"plan.tp=2"});
  CHECK(e.key == "plan.tp");

  // The simulator's MoE layer combines in BF16: an FP8 combine is refused, not ignored.
  e = load_err({"comm.combine_dtype=fp8"});
  CHECK(e.key == "comm.combine_dtype");
  CHECK(e.reason.find("not modelled") != std::string::npos);

  e = load_err({"comm.dispatch_dtype=fp8", "precision.recipe=bf16"});
  CHECK(e.key == "comm.dispatch_dtype");
}

TEST_CASE("a missing required field is named", "[scenario]") {
  const std::string path = "/tmp/tandem_test_missing.yaml";
  std::ofstream(path) << "model: " << repo("models/tiny-moe.yaml") << "\ncluster: "
                      << repo("topologies/h100-1gpu.yaml") << "\nplan: {pp: 1}\nschedule: {kind: 1f1b}\n";
  auto r = load_scenario(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().file == path);
  CHECK(r.error().key == "batch");
  CHECK(r.error().reason.find("missing") != std::string::npos);
}

TEST_CASE("same scenario, same result", "[scenario]") {
  const Scenario a = load_ok(kDefault), b = load_ok(kDefault);
  const Workload wa = scenario_workload(a), wb = scenario_workload(b);
  CHECK(wa.blocks[5].all_to_all.dest_nodes_per_token == wb.blocks[5].all_to_all.dest_nodes_per_token);
  const Scenario c = load_ok(kDefault, {"routing.seed=2"});
  CHECK(scenario_workload(c).blocks[5].all_to_all.dest_nodes_per_token ==
        Approx(wa.blocks[5].all_to_all.dest_nodes_per_token).epsilon(0.02));
}

TEST_CASE("skewed routing: per-member loads from the gate, seeded", "[scenario]") {
  const Scenario bal = load_ok(kDefault);
  const Workload wb = scenario_workload(bal);
  const RoutingPattern& pb = wb.blocks[5].routing;  // layer 4: an MoE layer
  REQUIRE(pb.rows_per_token.size() == 64);
  REQUIRE(pb.node_hit.size() == 8);
  // Balanced: every member alike, and the flows carry exactly the AllToAll volumes.
  for (size_t d = 0; d < 64; ++d) CHECK(pb.load_factor(static_cast<int64_t>(d)) == Approx(1.0));
  const AllToAll& a = wb.blocks[5].all_to_all;
  CHECK(pb.node_hit[1] * 7 == Approx(a.remote_nodes_per_token));
  CHECK(pb.gpu_hit[3] * 8 * 7 == Approx(a.nvlink_sends_per_token));

  const std::vector<std::string> skew = {"routing.model=skewed", "routing.skew=0.5"};
  const Scenario sk = load_ok(kDefault, skew);
  CHECK(sk.routing.model == RoutingModel::skewed);
  const Workload ws = scenario_workload(sk);
  const RoutingPattern& p = ws.blocks[5].routing;
  double rows = 0, hits = 0;
  for (size_t d = 0; d < 64; ++d) {
    rows += p.rows_per_token[d];
    hits += p.gpu_hit[d];
    CHECK(p.gpu_hit[d] <= p.node_hit[d / 8] + 1e-12);  // a GPU is hit only if its node is
  }
  CHECK(rows == Approx(8.0));  // top-8: every token makes 8 rows somewhere
  CHECK(hits <= 8.0);
  double nodes = 0;
  for (double n : p.node_hit) nodes += n;
  CHECK(nodes <= 4.0 + 1e-12);  // node limit 4
  CHECK(p.max_load > 1.2);      // some GPU is clearly hot
  CHECK(p.max_expert_load > p.max_load);
  // Seeded: the same seed gives the same pattern, another seed another one; layers differ.
  CHECK(scenario_workload(load_ok(kDefault, skew)).blocks[5].routing.rows_per_token == p.rows_per_token);
  auto other = skew;
  other.push_back("routing.seed=9");
  CHECK(scenario_workload(load_ok(kDefault, other)).blocks[5].routing.rows_per_token != p.rows_per_token);
  CHECK(ws.blocks[6].routing.rows_per_token != p.rows_per_token);
  // More skew, hotter GPUs.
  const Workload hot = scenario_workload(load_ok(kDefault, {"routing.model=skewed", "routing.skew=1.5"}));
  CHECK(hot.blocks[5].routing.max_load > p.max_load);

  const InputError missing = load_err({"routing.model=skewed"});
  CHECK(missing.key == "routing.skew");
  const InputError stray = load_err({"routing.skew=0.5"});
  CHECK(stray.key == "routing.skew");
  CHECK(load_err({"routing.model=skewed", "routing.skew=-1"}).key == "routing.skew");
}

TEST_CASE("measured routing: a histogram file replayed through the gate", "[scenario]") {
  const std::string kMeasured = "scenarios/tiny-sim-128-measured-routing.yaml";
  const Scenario s = load_ok(kMeasured);
  CHECK(s.routing.model == RoutingModel::measured);
  CHECK(s.routing.histogram_file == repo("scenarios/tiny-sim-128-measured-routing.csv"));
  REQUIRE(s.routing.histogram);
  CHECK(s.routing.histogram->tokens.size() == 8);  // layers 1..7 and the MTP module's 8
  CHECK(s.expert_layout().routing_histogram == s.routing.histogram);
  CHECK(s.expert_layout().routing_skew == 0);
  const Workload w = scenario_workload(s);
  int moe = 0;
  for (const Block& b : w.blocks) {
    if (b.routing.rows_per_token.empty() || b.layer < 1) continue;
    ++moe;
    const std::vector<int64_t>& counts = *s.routing.histogram->layer(b.layer);
    double total = 0;
    for (int64_t c : counts) total += static_cast<double>(c);
    const auto hottest = std::max_element(counts.begin(), counts.end()) - counts.begin();
    CHECK(b.routing.expert_load[idx(hottest)] ==
          Approx(static_cast<double>(counts[idx(hottest)]) * 64 / total).epsilon(0.03));
    CHECK(b.routing.max_load > 1.1);  // the illustrative histogram is skewed (sigma 0.3)
  }
  CHECK(moe == 8);
  // The same histogram through --set, on a scenario that routes balanced: the path is relative
  // to the scenario file, as every path of a scenario.
  const Scenario set = load_ok("scenarios/tiny-sim-128.yaml",
                               {"routing.model=measured", "routing.histogram=tiny-sim-128-measured-routing.csv"});
  CHECK(scenario_workload(set).blocks[3].routing.load == w.blocks[3].routing.load);
  // routing.noise still combines with it.
  CHECK(load_ok(kMeasured, {"routing.noise=0.1"}).routing.noise == 0.1);

  // Refusals: no histogram, one for another model, a file that is not there, a bad file, a
  // model the histogram does not cover.
  InputError e = load_err({"routing.model=measured"}, "scenarios/tiny-sim-128.yaml");
  CHECK(e.key == "routing.histogram");
  CHECK(e.reason.find("needs its histogram") != std::string::npos);
  e = load_err({"routing.histogram=x.csv"}, "scenarios/tiny-sim-128.yaml");
  CHECK(e.key == "routing.histogram");
  CHECK(e.reason.find("'model: measured' only") != std::string::npos);
  e = load_err({"routing.model=skewed", "routing.skew=0.5"}, kMeasured);
  CHECK(e.key == "routing.histogram");
  e = load_err({"routing.histogram=routing/none.csv"}, kMeasured);
  CHECK(e.key == "routing.histogram");
  CHECK(e.file.find("[--set]") != std::string::npos);
  CHECK(e.reason == "no such file: " + repo("scenarios/routing/none.csv"));
  e = load_err({"routing.histogram=tiny-sim-128.yaml"}, kMeasured);
  CHECK(e.file == repo("scenarios/tiny-sim-128.yaml"));
  CHECK(e.reason.find("expected the header 'layer,expert,tokens'") != std::string::npos);
  e = load_err({"routing.histogram=routing/deepseek-v3-illustrative.csv"}, kMeasured);
  CHECK(e.file == repo("scenarios/routing/deepseek-v3-illustrative.csv"));
  CHECK(e.key == "line 68");  // layer 3, expert 64: tiny-sim-128's model has 64 experts
  CHECK(e.reason.find("expert 64 out of range") != std::string::npos);
  e = load_err({"model.num_hidden_layers=10"}, kMeasured);  // MoE layers 1..9 and MTP 10
  CHECK(e.file == repo("scenarios/tiny-sim-128-measured-routing.csv"));
  CHECK(e.key == "layer 9");
  CHECK(e.reason.find("no rows for MoE layer 9") != std::string::npos);
  e = load_err({"routing.model=measured", "routing.histogram=routing/deepseek-v3-illustrative.csv",
                "model.n_routed_experts=128"});
  CHECK(e.file == repo("scenarios/routing/deepseek-v3-illustrative.csv"));
  CHECK(e.reason.find("expert 128 out of range") != std::string::npos);
}

TEST_CASE("a scenario card written elsewhere keeps its histogram", "[scenario]") {
  tandem::test::TempDir dir;
  const std::string out = dir.file("sub.yaml");
  write_scenario_card(repo("scenarios/tiny-sim-128-measured-routing.yaml"), {"plan.pp=2"}, out, "test");
  const auto r = load_scenario(out);
  INFO((r.ok() ? "" : r.error().message()));
  REQUIRE(r.ok());
  CHECK(std::filesystem::equivalent(r.value().routing.histogram_file, repo("scenarios/tiny-sim-128-measured-routing.csv")));
}
