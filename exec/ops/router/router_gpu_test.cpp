// The GPU half of the router test: router_cuda.h against router.h (and the balance counts of
// balance.h). DeepSeek-V3 (E 256, G 8, 4 groups, top-8), tiny-moe (models/tiny-moe.yaml) and
// corner configs; continuous, tie-heavy (a few score levels, grid bias) and skewed-bias scores.
// Selection (ids, slot order) and gates bit-identical to select_experts / gate_weights given the
// same scores; the sigmoid within 16 FP32 ulps (2e-6 relative) of the CPU's; backward d_logits
// bit-identical to router_backward_logits (with and without the balance loss's d_scores); counts
// equal to add_expert_counts; the Blas forward: selection consistent with its own scores.
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/balance/balance.h"
#include "exec/ops/router/router.h"
#include "exec/ops/router/router_cuda.h"
#include "models/model_card.h"
#include "tests/exec/moe_test_util.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"
#include "tests/test_paths.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;

using exec_test::random_mat;
using moe::test::router_config;
using gputest::bits_of;
using gputest::expect;
using gputest::flat;
using gputest::same_bits;
using gputest::sync_device;
using gputest::to_device;
using gputest::to_host;

nn::Mat<float> mat_of(const std::vector<float>& v, int rows, int cols) {
  nn::Mat<float> m(rows, cols);
  if (!v.empty()) std::memcpy(m.data(), v.data(), v.size() * sizeof(float));
  return m;
}

// The model cards hold these configs: cross-checked against the repository's cards.
void check_card(const moe::RouterConfig& c, const char* card) {
  const std::string path = tandem::test::repo(std::string("models/") + card);
  const Result<ModelCard> r = load_model_card(path);
  if (!r.ok()) {
    expect(false, "cannot read " + path);
    return;
  }
  const moe::RouterConfig f = moe::RouterConfig::from_card(r.value());
  expect(f.n_routed == c.n_routed && f.n_group == c.n_group && f.topk_group == c.topk_group && f.top_k == c.top_k &&
             f.routed_scaling_factor == c.routed_scaling_factor && f.norm_topk_prob == c.norm_topk_prob,
         std::string("router config == models/") + card);
}

// exec/ops's sigmoid (router.cpp): T(1) / (T(1) + std::exp(-z)) in float.
float cpu_sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

enum class Scores { random, ties, skewed };

struct RouterInputs {
  nn::Mat<float> logits;  // empty for the tie-heavy scores (they are not a sigmoid's values)
  nn::Mat<float> scores;
  nn::Vec<float> bias;
};

RouterInputs router_inputs(const moe::RouterConfig& c, int tokens, Scores kind, uint64_t seed) {
  const int E = c.n_routed;
  RouterInputs in;
  in.bias = nn::Vec<float>::Zero(E);
  if (kind == Scores::ties) {
    // Scores on a grid of k/8 (k = 1..3) and a bias on the same grid: sums are exact, ties everywhere.
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> lvl(1, 3);
    in.scores.resize(tokens, E);
    for (int64_t i = 0; i < in.scores.size(); ++i) in.scores.data()[i] = static_cast<float>(lvl(rng)) / 8.0f;
    for (int e = 0; e < E; ++e) in.bias(e) = static_cast<float>((e * 7 % 3) - 1) / 8.0f;
    return in;
  }
  in.logits = random_mat<float>(tokens, E, seed, 1.5);
  in.scores = in.logits.unaryExpr(&cpu_sigmoid);
  if (kind == Scores::skewed) {
    // Group 0 strongly preferred, group 1 penalised, small noise elsewhere (a bias mid-training).
    const int per = c.experts_per_group();
    const nn::Mat<float> noise = random_mat<float>(E, 1, seed + 1, 0.02);
    for (int e = 0; e < E; ++e) in.bias(e) = e < per ? 0.3f : (e < 2 * per ? -0.2f : noise(e, 0));
  }
  return in;
}

void check_router_case(const moe::RouterConfig& c, int tokens, Scores kind, uint64_t seed, const std::string& tag) {
  const int E = c.n_routed, K = c.top_k;
  const cu::RouterConfig p = c;
  const RouterInputs in = router_inputs(c, tokens, kind, seed);
  const std::size_t nk = idx(tokens) * K;

  // Selection and gates from the CPU's scores.
  const moe::Routing r = moe::select_experts<float>(c, in.scores, in.bias);
  const nn::Mat<float> gate = moe::gate_weights<float>(c, in.scores, r);
  auto d_scores = to_device(flat(in.scores));
  auto d_bias = to_device(std::vector<float>(in.bias.data(), in.bias.data() + E));
  cu::DeviceBuffer<int32_t> d_expert(nk);
  cu::DeviceBuffer<float> d_gate(nk);
  cu::router_select(d_scores.get(), d_bias.get(), tokens, p, d_expert.get(), d_gate.get(), nullptr);
  const std::vector<int32_t> ids = to_host(d_expert);
  expect(ids == r.expert, tag + ": expert ids and slot order == exec/ops select_experts");
  expect(same_bits(to_host(d_gate), flat(gate)), tag + ": gates == exec/ops gate_weights (bitwise)");
  if (ids != r.expert) {
    for (int t = 0; t < tokens; ++t) {
      bool same = true;
      for (int j = 0; j < K; ++j) same = same && ids[idx(t) * K + j] == r.at(t, j);
      if (same) continue;
      std::printf("  first differing token %d:", t);
      for (int j = 0; j < K; ++j) std::printf(" %d/%d", ids[idx(t) * K + j], r.at(t, j));
      std::printf(" (gpu/cpu)\n");
      break;
    }
  }

  // Backward to the logits, with the balance loss's d_scores and without.
  const int seq_len = tokens % 128 == 0 ? 128 : tokens;
  const moe::BalanceLoss<float> bl = moe::balance_loss_forward<float>(r, in.scores, seq_len, 1e-3);
  const nn::Mat<float> d_bal = moe::balance_loss_backward<float>(bl, in.scores, seq_len, 1e-3, 1.0f);
  const nn::Mat<float> dg = random_mat<float>(tokens, K, seed + 5);
  moe::RouterState<float> st;
  st.scores = in.scores;
  st.routing = r;
  st.gate = gate;
  auto d_dg = to_device(flat(dg));
  cu::DeviceBuffer<float> d_dlog(idx(tokens) * E);
  for (bool with_bal : {true, false}) {
    const nn::Mat<float> want = moe::router_backward_logits<float>(c, st, dg, with_bal ? &d_bal : nullptr);
    auto d_bal_dev = to_device(flat(d_bal));
    cu::router_backward_logits(d_scores.get(), d_expert.get(), d_dg.get(), with_bal ? d_bal_dev.get() : nullptr,
                               tokens, p, d_dlog.get(), nullptr);
    expect(same_bits(to_host(d_dlog), flat(want)),
           tag + ": d_logits == exec/ops router_backward_logits (bitwise)" + (with_bal ? " with balance d_scores" : ""));
    if (with_bal) {  // d_logits written over d_scores
      cu::router_backward_logits(d_scores.get(), d_expert.get(), d_dg.get(), d_bal_dev.get(), tokens, p,
                                 d_bal_dev.get(), nullptr);
      expect(same_bits(to_host(d_bal_dev), flat(want)), tag + ": d_logits in place of d_scores");
    }
  }

  // Expert loads, accumulated onto non-zero (and large) counts.
  std::vector<int64_t> counts(idx(E));
  for (int e = 0; e < E; ++e) counts[idx(e)] = (int64_t{1} << 40) + e * 3;
  auto d_counts = to_device(counts);
  moe::add_expert_counts(r, counts);
  moe::add_expert_counts(r, counts);
  cu::add_expert_counts(d_expert.get(), nk, E, d_counts.get(), nullptr);
  cu::add_expert_counts(d_expert.get(), nk, E, d_counts.get(), nullptr);
  expect(to_host(d_counts) == counts, tag + ": counts == exec/ops add_expert_counts (twice)");

  // The forward from logits: the sigmoid within tolerance of exec/ops's; the selection and gates
  // are exec/ops's on the GPU's own scores (a 1-ulp sigmoid difference may move a near-tie).
  if (in.logits.size() > 0) {
    auto d_logits = to_device(flat(in.logits));
    cu::DeviceBuffer<float> d_s2(idx(tokens) * E);
    cu::router_forward(d_logits.get(), d_bias.get(), tokens, p, d_s2.get(), d_expert.get(), d_gate.get(), nullptr);
    const std::vector<float> s2 = to_host(d_s2);
    double worst = 0;
    std::size_t differ = 0;
    for (std::size_t i = 0; i < s2.size(); ++i) {
      const double want = in.scores.data()[i];
      worst = std::max(worst, std::abs(s2[i] - want) / want);
      differ += bits_of(s2[i]) != bits_of(in.scores.data()[i]);
    }
    expect(worst <= 2e-6, tag + ": sigmoid within 2e-6 relative of exec/ops's (worst " + std::to_string(worst) + ")");
    const nn::Mat<float> s2m = mat_of(s2, tokens, E);
    const moe::Routing r2 = moe::select_experts<float>(c, s2m, in.bias);
    expect(to_host(d_expert) == r2.expert, tag + ": router_forward ids == exec/ops on the GPU's scores");
    expect(same_bits(to_host(d_gate), flat(moe::gate_weights<float>(c, s2m, r2))),
           tag + ": router_forward gates == exec/ops on the GPU's scores (bitwise)");
    std::size_t moved = 0;
    for (std::size_t i = 0; i < r2.expert.size(); ++i) moved += r2.expert[i] != r.expert[i];
    std::printf("%s: sigmoid %zu of %zu not bit-equal (worst rel %.3g); %zu slots differ from the CPU's scores\n",
                tag.c_str(), differ, s2.size(), worst, moved);
  }
  sync_device(tag.c_str());
}

// The convenience forward through Blas (tiny-moe sizes): scores within a GEMM tolerance of
// exec/ops's router_forward, selection consistent with its own scores.
void check_router_blas(const moe::RouterConfig& c) {
  const int tokens = 512, hidden = 256, E = c.n_routed, K = c.top_k;
  const nn::Mat<float> x = random_mat<float>(tokens, hidden, 61);
  const nn::Mat<float> Wg = random_mat<float>(E, hidden, 62, 0.1);
  const nn::Mat<float> bias_m = random_mat<float>(E, 1, 63, 0.05);
  const nn::Vec<float> bias = bias_m.col(0);
  const moe::RouterState<float> st = moe::router_forward<float>(c, Wg, bias, x);
  auto dx = to_device(flat(x)), dw = to_device(flat(Wg));
  auto db = to_device(std::vector<float>(bias.data(), bias.data() + E));
  cu::DeviceBuffer<float> ds(idx(tokens) * E), dgate(idx(tokens) * K);
  cu::DeviceBuffer<int32_t> de(idx(tokens) * K);
  cu::Blas blas(nullptr);
  cu::router_forward(blas, dx.get(), dw.get(), tokens, hidden, db.get(), c, ds.get(), de.get(),
                     dgate.get());
  const std::vector<float> s = to_host(ds);
  double worst = 0;
  for (std::size_t i = 0; i < s.size(); ++i) worst = std::max(worst, std::abs(s[i] - double(st.scores.data()[i])));
  expect(worst <= 1e-5, "router Blas forward: scores within 1e-5 of exec/ops router_forward (worst " +
                            std::to_string(worst) + ")");
  const nn::Mat<float> sm = mat_of(s, tokens, E);
  const moe::Routing r = moe::select_experts<float>(c, sm, bias);
  expect(to_host(de) == r.expert, "router Blas forward: ids == exec/ops on the GPU's scores");
  std::size_t moved = 0;
  for (std::size_t i = 0; i < r.expert.size(); ++i) moved += r.expert[i] != st.routing.expert[i];
  std::printf("router Blas forward: worst |Δs| %.3g, %zu slots differ from exec/ops's full forward\n", worst, moved);
  sync_device("router Blas forward");
}

void check_router_validation() {
  auto throws = [](const cu::RouterConfig& p) {
    try {
      cu::check_device_router(p);
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  cu::RouterConfig p = router_config(256, 8, 4, 8, 2.5, true);
  expect(!throws(p), "RouterConfig: DeepSeek-V3 is valid");
  cu::RouterConfig q = p;
  q.n_routed = 2048;
  q.n_group = 8;
  expect(throws(q), "RouterConfig: n_routed > 1024 rejected");
  q = p;
  q.n_group = 7;
  expect(throws(q), "RouterConfig: n_group not dividing n_routed rejected");
  q = p;
  q.top_k = 129;
  expect(throws(q), "RouterConfig: top_k > topk_group * E/G rejected");
  bool threw = false;
  try {
    cu::router_select(nullptr, nullptr, -1, p, nullptr, nullptr, nullptr);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "router_select: negative tokens rejected");
  cu::router_select(nullptr, nullptr, 0, p, nullptr, nullptr, nullptr);  // empty: a no-op
}

void check_router() {
  const moe::RouterConfig dsv3 = router_config(256, 8, 4, 8, 2.5, true);
  const moe::RouterConfig tiny = router_config(16, 4, 2, 4, 2.5, true);
  check_card(dsv3, "deepseek-v3.yaml");
  check_card(tiny, "tiny-moe.yaml");
  struct Case {
    moe::RouterConfig c;
    int tokens;
    const char* name;
  };
  const Case cases[] = {
      {dsv3, 4096, "deepseek-v3 E256 G8 M4 K8"},
      {tiny, 1024, "tiny-moe E16 G4 M2 K4"},
      {router_config(72, 6, 3, 6, 1.0, false), 640, "E72 G6 M3 K6 unnormalised"},
      {router_config(8, 8, 3, 3, 2.5, true), 512, "E8 G8 M3 K3 (one expert a group)"},
      {router_config(12, 3, 3, 5, 1.5, true), 512, "E12 G3 M3 K5 (no group limit)"},
      {router_config(24, 6, 2, 8, 2.5, true), 512, "E24 G6 M2 K8 (all of the kept groups)"},
      {router_config(1024, 16, 4, 8, 2.5, true), 256, "E1024 G16 M4 K8 (the device limit)"},
      {router_config(64, 1, 1, 6, 2.5, true), 384, "E64 G1 K6 (greedy)"},
  };
  uint64_t seed = 700;
  for (const Case& k : cases) {
    check_router_case(k.c, k.tokens, Scores::random, ++seed, std::string(k.name) + ", random");
    check_router_case(k.c, k.tokens, Scores::ties, ++seed, std::string(k.name) + ", tie-heavy");
    check_router_case(k.c, k.tokens, Scores::skewed, ++seed, std::string(k.name) + ", skewed bias");
  }
  check_router_blas(tiny);
  check_router_validation();
}

}  // namespace

TANDEM_GPU_CHECK(router) { check_router(); }
