#include <catch2/catch.hpp>

#include <fstream>

#include "scenarios/scenario.h"
#include "sim/compute_cost.h"
#include "../test_paths.h"
#include "../topologies/cluster_cards.h"

using namespace tandem;
using tandem::test::repo;

namespace {

ComputeCostModel h800() {
  auto cal = load_calibration(repo("sim/calibration/h800-deepgemm.yaml"));
  REQUIRE(cal.ok());
  return ComputeCostModel(test::cluster_card("h800-2048").gpu, cal.value());
}

Gemm fp8(int64_t m, int64_t n, int64_t k, int64_t count = 1) {
  Gemm g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.count = count;
  g.a = g.b = Dtype::fp8_e4m3;
  g.b_block_scaled = true;
  return g;
}

}  // namespace

TEST_CASE("the built-in default calibration is the shipped file", "[sim]") {
  // The binary carries its own copy (sim/shipped_data.h): it must be the file's, figure for figure.
  auto file = load_calibration(repo("sim/calibration/h800-deepgemm.yaml"));
  REQUIRE(file.ok());
  const Calibration built_in = default_calibration();
  const Calibration& f = file.value();
  CHECK(built_in.file == "sim/calibration/h800-deepgemm.yaml (shipped)");
  CHECK(built_in.name == f.name);
  REQUIRE(built_in.gemms.size() == f.gemms.size());
  for (size_t i = 0; i < f.gemms.size(); ++i) {
    CHECK(built_in.gemms[i].m == f.gemms[i].m);
    CHECK(built_in.gemms[i].tflops == f.gemms[i].tflops);
  }
  CHECK(built_in.hbm_efficiency == f.hbm_efficiency);
  CHECK(built_in.attention_fwd_efficiency == f.attention_fwd_efficiency);
  CHECK(built_in.all_to_all.ib_efficiency == f.all_to_all.ib_efficiency);
  CHECK(built_in.provenance == f.provenance);
  // And it is what a simulation without a calibration file gets.
  CHECK(resolve_calibration({}).provenance == f.provenance);
}

TEST_CASE("a GEMM in the calibration table takes its measured time", "[sim]") {
  const ComputeCostModel c = h800();
  const Gemm g = fp8(4096, 7168, 16384);
  CHECK(g.flops() / c.gemm_seconds(g) / 1e12 == Approx(1426));
  const Gemm e = fp8(8192, 4096, 7168, 4);  // the EP64 expert gate/up slice: grouped row
  CHECK(e.flops() / c.gemm_seconds(e) / 1e12 == Approx(1346));
  const Gemm small = fp8(64, 2112, 7168);
  CHECK(small.flops() / c.gemm_seconds(small) / 1e12 == Approx(206));
}

TEST_CASE("other shapes scale from the nearest measurement by their roofline", "[sim]") {
  const ComputeCostModel c = h800();
  // Twice the rows of a compute-bound row: twice the time.
  const Gemm a = fp8(4096, 7168, 16384), b = fp8(8192, 7168, 16384);
  CHECK(c.gemm_seconds(b) == Approx(2 * c.gemm_seconds(a)).epsilon(0.02));
  // Never faster than the tensor-core peak or HBM.
  for (int64_t m : {1, 17, 256, 1000, 5000, 70000})
    for (int64_t n : {128, 1536, 7168, 24576})
      for (int64_t k : {128, 2048, 7168}) {
        const Gemm g = fp8(m, n, k);
        CHECK(g.flops() / c.gemm_seconds(g) <= 1979e12 * 1.0001);
        CHECK(g.bytes() / c.gemm_seconds(g) <= 3.35e12 * 1.0001);
      }
  // Fewer SMs (communication kernels hold 20 of 132): proportionally slower.
  CHECK(c.gemm_seconds(a, 112) == Approx(c.gemm_seconds(a) * 132.0 / 112.0));
}

TEST_CASE("BF16 GEMMs, attention and memory-bound kernels", "[sim]") {
  const ComputeCostModel c = h800();
  Gemm g;
  g.m = 4096;
  g.n = 129280;
  g.k = 7168;  // the output head: from the nearest measured BF16 row (cuBLAS, M=4096 N=2112 K=7168)
  CHECK(g.flops() / c.gemm_seconds(g) / 1e12 == Approx(715.78));
  Gemm small = g;  // few rows run far below peak (28% at M=128): the per-shape rows' point
  small.m = 128;
  small.n = 2112;
  CHECK(small.flops() / c.gemm_seconds(small) / 1e12 == Approx(275.74));
  PassCost p;
  p.attention_flops = 1e12;
  CHECK(c.pass_seconds(p, false) == Approx(1e12 / (989e12 * 0.60)));
  CHECK(c.pass_seconds(p, true) == Approx(1e12 / (989e12 * 0.45)));
  PassCost m;
  m.add("stream", KernelFamily::cast, 3.35e9);
  CHECK(c.pass_seconds(m, false) == Approx(1e-3 / 0.80));
}

TEST_CASE("one DeepSeek-V3 MoE layer's compute on one GPU", "[sim]") {
  // Reference §15: forward of one MoE layer per micro-batch per GPU ~5.5 TFLOP, 5.5-9 ms at
  // 600-1000 TFLOP/s. The cost model's figure must land in that range.
  auto s = load_scenario(repo("scenarios/deepseek-v3-2048.yaml"));
  REQUIRE(s.ok());
  const Workload w = scenario_workload(s.value());
  const ComputeCostModel c = h800();
  double fwd = 0, flops = 0;
  for (const Op& op : w.blocks[10].ops) {
    fwd += c.pass_seconds(op.fwd, false);
    flops += op.fwd.flops();
  }
  CHECK(flops / 1e12 == Approx(5.5).epsilon(0.05));
  CHECK(fwd > 5.5e-3);
  CHECK(fwd < 9e-3);
  WARN("MoE layer forward: " << fwd * 1e3 << " ms, " << flops / fwd / 1e12 << " TFLOP/s");
}

TEST_CASE("a bad calibration file is an input error", "[sim]") {
  const std::string path = "/tmp/tandem_tests_bad_calibration.yaml";
  std::ofstream(path) << "name: x\nfp8_gemms:\n  - [64, 2112, 7168]\nbf16_gemm_efficiency: 0.8\n";
  auto r = load_calibration(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().key == "fp8_gemms[0]");
  std::ofstream(path) << "name: x\nfp8_gemms:\n  - [64, 2112, 7168, 200]\nbf16_gemm_efficiency: 2\n";
  r = load_calibration(path);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().key == "bf16_gemm_efficiency");
}

// `tandem bench gemm --json` output (cli/bench_command.cpp's shape) as a calibration overlay.
TEST_CASE("tandem bench output overlays the calibration", "[sim]") {
  const std::string path = "/tmp/tandem_tests_bench_gemm.json";
  std::ofstream(path) << R"({"results": [{"m": 4096, "n": 7168, "k": 2048, "mode": "vec128_blk128x128", "ms": 0.1, "tflops": 584}],
    "device": {"name": "NVIDIA H100 80GB HBM3", "sm_count": 132},
    "timing": {"iters": 20, "warmup": 3},
    "calibration": {"name": "tandem-bench-gemm", "gpu": "NVIDIA H100 80GB HBM3", "source": "tandem bench gemm",
                    "fp8_gemms": [[4096, 7168, 2048, 584], [4096, 1024, 1024, 300]], "hbm_efficiency": 0.5},
    "calibration_sm_count_target": {"sm_count_target": 112, "fp8_gemms": [[4096, 7168, 2048, 500]]}})";
  auto bench = load_calibration(path);
  INFO((bench.ok() ? "" : bench.error().message()));
  REQUIRE(bench.ok());
  CHECK(bench.value().from_bench);
  CHECK(bench.value().gemms.size() == 2);
  CHECK(bench.value().bf16_gemm_efficiency == 0);  // not measured by this bench

  auto base = load_calibration(repo("sim/calibration/h800-deepgemm.yaml"));
  REQUIRE(base.ok());
  const Calibration c = overlay(base.value(), bench.value());
  CHECK(c.gemms.size() == base.value().gemms.size() + 1);  // one row replaced, one new
  CHECK(c.hbm_efficiency == 0.5);
  CHECK(c.bf16_gemm_efficiency == base.value().bf16_gemm_efficiency);
  // The measured row now sets that shape's time: half the published 1168 TFLOP/s, twice the time.
  const GpuSpec gpu = test::cluster_card("h800-2048").gpu;
  const ComputeCostModel published(gpu, base.value()), measured(gpu, c);
  Gemm g;
  g.m = 4096; g.n = 7168; g.k = 2048;
  g.a = g.b = Dtype::fp8_e4m3;
  g.b_block_scaled = true;
  CHECK(measured.gemm_seconds(g) / published.gemm_seconds(g) == Approx(1168.0 / 584.0).epsilon(1e-9));

  // A bench output with a bad row is an error naming the file and the key.
  std::ofstream(path) << R"({"results": [], "calibration": {"name": "b", "fp8_gemms": [[4096, 7168, -1, 5]]}})";
  auto bad = load_calibration(path);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().file == path);
  CHECK(bad.error().key == "calibration.fp8_gemms[0]");
}
