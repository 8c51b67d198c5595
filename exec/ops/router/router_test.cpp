// Router: group-limited selection against a brute-force reference, the routing invariants, the
// gate normalisation and the backward pass against central finite differences.
#include <algorithm>
#include <bit>
#include <catch2/catch.hpp>
#include <set>

#include "common/signed_index.h"
#include "exec/ops/moe_layer/dispatch_plan.h"
#include "exec/ops/router/router.h"
#include "tests/exec/moe_test_util.h"

using tandem::idx;

using namespace tandem::moe;
using tandem::moe::test::dot;
using tandem::moe::test::finite_diff;
using tandem::moe::test::random_mat;
using tandem::moe::test::rel_err;
using tandem::moe::test::router_config;

namespace {

// "a ranks before b": higher value, then lower index.
template <class T>
bool beats(T va, int ia, T vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

// The reference: group scores from a full sort of each group, the kept groups as the one subset
// of topk_group groups each of which beats every group left out (found by enumerating all
// subsets), then the experts of those groups stably sorted by biased score.
template <class T>
std::vector<int32_t> brute_select(const RouterConfig& c, const T* s, const T* bias) {
  const int E = c.n_routed, G = c.n_group, per = c.experts_per_group();
  std::vector<T> b(idx(E));
  for (int e = 0; e < E; ++e) b[e] = s[e] + bias[e];
  std::vector<T> gs(idx(G));
  for (int g = 0; g < G; ++g) {
    std::vector<T> v(b.begin() + g * per, b.begin() + (g + 1) * per);
    std::sort(v.begin(), v.end(), std::greater<T>());
    gs[g] = per == 1 ? v[0] : v[0] + v[1];
  }
  int found = -1, valid = 0;
  for (int mask = 0; mask < (1 << G); ++mask) {
    if (std::popcount(static_cast<unsigned>(mask)) != c.topk_group) continue;
    bool ok = true;
    for (int a = 0; a < G && ok; ++a)
      for (int o = 0; o < G && ok; ++o)
        if ((mask >> a & 1) && !(mask >> o & 1)) ok = beats(gs[a], a, gs[o], o);
    if (ok) {
      found = mask;
      ++valid;
    }
  }
  REQUIRE(valid == 1);
  std::vector<int> cand;
  for (int e = 0; e < E; ++e)
    if (found >> (e / per) & 1) cand.push_back(e);
  std::stable_sort(cand.begin(), cand.end(), [&](int x, int y) { return b[x] > b[y]; });
  return std::vector<int32_t>(cand.begin(), cand.begin() + c.top_k);
}

// Scores drawn from a few levels (many exact ties) or continuous.
template <class T>
Mat<T> level_scores(int tokens, int E, uint64_t seed, int levels) {
  std::mt19937_64 rng(seed);
  Mat<T> s(tokens, E);
  if (levels > 0) {
    std::uniform_int_distribution<int> d(1, levels);
    for (int64_t i = 0; i < s.size(); ++i) s.data()[i] = static_cast<T>(d(rng)) / static_cast<T>(8);
  } else {
    std::uniform_real_distribution<double> d(0.0, 1.0);
    for (int64_t i = 0; i < s.size(); ++i) s.data()[i] = static_cast<T>(d(rng));
  }
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("moe router: selection equals the brute-force reference, ties included", "[moe][router]",
                   float, double) {
  using T = TestType;
  const std::vector<RouterConfig> configs = {
      router_config(16, 4, 2, 4),   // tiny-moe
      router_config(32, 8, 4, 8),   // DeepSeek-V3's shape, scaled down (4 experts a group)
      router_config(8, 8, 3, 3),    // one expert a group
      router_config(12, 3, 3, 5),   // no group limit (topk_group = n_group)
      router_config(16, 1, 1, 6),   // a single group
      router_config(24, 6, 2, 8),   // top_k = all experts of the kept groups
  };
  int cfg_i = 0;
  for (const RouterConfig& c : configs) {
    ++cfg_i;
    for (int levels : {0, 2, 3, 5}) {
      const int tokens = 150;
      const uint64_t seed = static_cast<uint64_t>(cfg_i * 100 + levels);
      const Mat<T> scores = level_scores<T>(tokens, c.n_routed, seed, levels);
      Vec<T> bias = Vec<T>::Zero(c.n_routed);
      if (levels == 3)  // biases that create and break ties on a grid
        for (int e = 0; e < c.n_routed; ++e) bias(e) = static_cast<T>((e * 7 % 3) - 1) / static_cast<T>(8);
      const Routing r = select_experts<T>(c, scores, bias);
      REQUIRE(r.tokens == tokens);
      REQUIRE(r.top_k == c.top_k);
      for (int t = 0; t < tokens; ++t) {
        const std::vector<int32_t> ref = brute_select<T>(c, scores.row(t).data(), bias.data());
        const std::vector<int32_t> got(r.expert.begin() + t * c.top_k, r.expert.begin() + (t + 1) * c.top_k);
        INFO("config " << cfg_i << " levels " << levels << " token " << t);
        REQUIRE(got == ref);
      }
    }
  }
}

TEST_CASE("moe router: at most topk_group groups (nodes) and exactly top_k distinct experts", "[moe][router]") {
  // DeepSeek-V3's routing: 256 experts, 8 groups, 4 groups kept, top-8; EP64 over 8 nodes of 8.
  const RouterConfig c = router_config(256, 8, 4, 8);
  const EpLayout ep(256, 64);
  REQUIRE(groups_are_nodes(c, ep, 8));
  REQUIRE_FALSE(groups_are_nodes(c, EpLayout(256, 32), 8));
  for (int e = 0; e < 256; ++e) REQUIRE(node_of_expert(ep, e, 8) == group_of_expert(c, e));

  const Mat<double> scores = random_mat(300, 256, 7).unaryExpr([](double z) { return 1 / (1 + std::exp(-z)); });
  const Vec<double> bias = random_mat(256, 1, 8, 0.05);
  const Routing r = select_experts<double>(c, scores, bias);
  for (int t = 0; t < r.tokens; ++t) {
    std::set<int> experts, groups, nodes;
    for (int j = 0; j < r.top_k; ++j) {
      experts.insert(r.at(t, j));
      groups.insert(group_of_expert(c, r.at(t, j)));
      nodes.insert(node_of_expert(ep, r.at(t, j), 8));
    }
    REQUIRE(static_cast<int>(experts.size()) == c.top_k);
    REQUIRE(static_cast<int>(groups.size()) <= c.topk_group);
    REQUIRE(static_cast<int>(nodes.size()) <= c.topk_group);
    // slots in rank order of the biased score
    for (int j = 1; j < r.top_k; ++j) {
      const int a = r.at(t, j - 1), b = r.at(t, j);
      REQUIRE(beats(scores(t, a) + bias(a), a, scores(t, b) + bias(b), b));
    }
  }
}

TEST_CASE("moe router: gate weights are the normalised unbiased scores times routed_scaling_factor",
          "[moe][router]") {
  const Mat<float> x = random_mat<float>(64, 32, 11);
  const Mat<float> Wg = random_mat<float>(16, 32, 12, 0.3);
  Vec<float> bias = random_mat<float>(16, 1, 13, 0.5);  // a large bias changes selection, not gates
  for (bool norm : {true, false}) {
    const RouterConfig c = router_config(16, 4, 2, 4, 2.5, norm);
    const RouterState<float> st = router_forward<float>(c, Wg, bias, x);
    for (int t = 0; t < st.routing.tokens; ++t) {
      float sum = 0, ssum = 0;
      for (int j = 0; j < c.top_k; ++j) {
        sum += st.gate(t, j);
        ssum += st.scores(t, st.routing.at(t, j));
      }
      for (int j = 0; j < c.top_k; ++j) {
        const float s = st.scores(t, st.routing.at(t, j));
        REQUIRE(st.gate(t, j) == (norm ? s / ssum * 2.5f : s * 2.5f));
      }
      if (norm) REQUIRE(std::abs(sum - 2.5f) <= 2.5f * 4e-7f);
    }
  }
}

TEST_CASE("moe router: backward matches central finite differences (double, selection fixed)",
          "[moe][router]") {
  for (bool norm : {true, false}) {
    const RouterConfig c = router_config(8, 4, 2, 3, 2.5, norm);
    Mat<double> x = random_mat(6, 10, 21);
    Mat<double> Wg = random_mat(8, 10, 22, 0.5);
    const Vec<double> bias = random_mat(8, 1, 23, 0.1);
    const RouterState<double> st = router_forward<double>(c, Wg, bias, x);
    const Routing fixed = st.routing;
    const Mat<double> R = random_mat(6, 3, 24);  // dJ/d gate
    const Mat<double> Q = random_mat(6, 8, 25);  // dJ/d scores (a dense term, like the balance loss)
    auto loss = [&] {
      const RouterState<double> s = router_forward<double>(c, Wg, bias, x, &fixed);
      return dot(s.gate, R) + dot(s.scores, Q);
    };
    const Mat<double> d_logits = router_backward_logits<double>(c, st, R, &Q);
    const Mat<double> dx = router_backward_input<double>(Wg, d_logits);
    Mat<double> dW = Mat<double>::Zero(8, 10);
    router_backward_weight<double>(st, d_logits, dW);
    INFO("norm_topk_prob " << norm);
    CHECK(rel_err(dx, finite_diff(x, loss)) < 1e-7);
    CHECK(rel_err(dW, finite_diff(Wg, loss)) < 1e-7);
    // without the dense term
    auto loss_g = [&] { return dot(router_forward<double>(c, Wg, bias, x, &fixed).gate, R); };
    const Mat<double> dl2 = router_backward_logits<double>(c, st, R);
    CHECK(rel_err(router_backward_input<double>(Wg, dl2), finite_diff(x, loss_g)) < 1e-7);
  }
}

TEST_CASE("moe router: invalid configs are rejected", "[moe][router]") {
  RouterConfig c = router_config(16, 4, 2, 4);
  c.top_k = 9;  // more than 2 groups of 4 hold
  REQUIRE_THROWS_AS(c.validate(), std::invalid_argument);
  c = router_config(16, 4, 2, 4);
  c.n_group = 3;
  REQUIRE_THROWS_AS(c.validate(), std::invalid_argument);
  REQUIRE_THROWS_AS(EpLayout(16, 3), std::invalid_argument);
}
