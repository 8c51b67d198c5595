// Load balancing: the aux-loss-free bias update (direction, and that it evens out a skewed
// router), load statistics, and the sequence-wise balance loss with its gradient.
#include <catch2/catch.hpp>
#include <cmath>

#include "exec/ops/balance/balance.h"
#include "tests/exec/moe_test_util.h"

using namespace tandem::moe;
using tandem::moe::test::finite_diff;
using tandem::moe::test::random_mat;
using tandem::moe::test::rel_err;

namespace {
RouterConfig tiny_router() {
  RouterConfig c;
  c.n_routed = 16;
  c.n_group = 4;
  c.topk_group = 2;
  c.top_k = 4;
  c.routed_scaling_factor = 2.5;
  c.norm_topk_prob = true;
  return c;
}
template <class T>
Mat<T> sigmoid(const Mat<T>& z) {
  return z.unaryExpr([](T v) { return T(1) / (T(1) + std::exp(-v)); });
}
}  // namespace

TEST_CASE("moe balance: counts, load statistics and the bias update direction", "[moe][balance]") {
  Routing r;
  r.tokens = 3;
  r.top_k = 2;
  r.expert = {0, 1, 0, 2, 0, 1};
  const std::vector<int64_t> counts = expert_counts(r, 4);
  REQUIRE(counts == std::vector<int64_t>{3, 2, 1, 0});
  const LoadStats s = load_stats(counts);
  REQUIRE(s.max == 3);
  REQUIRE(s.min == 0);
  REQUIRE(s.total == 6);
  REQUIRE(s.mean == 1.5);
  REQUIRE(s.max_over_mean == 2.0);

  // mean 1.5: experts 0 and 1 are overloaded (bias down), 2 and 3 underloaded (bias up)
  Vec<float> bias = Vec<float>::Zero(4);
  update_bias<float>(bias, counts, 0.001);
  REQUIRE(bias(0) == -0.001f);
  REQUIRE(bias(1) == -0.001f);
  REQUIRE(bias(2) == 0.001f);
  REQUIRE(bias(3) == 0.001f);
  // exactly at the mean: no change
  Vec<double> b2 = Vec<double>::Zero(3);
  update_bias<double>(b2, {2, 1, 3}, 0.5);
  REQUIRE(b2(0) == 0.0);
  REQUIRE(b2(1) == 0.5);
  REQUIRE(b2(2) == -0.5);
  Vec<double> b3 = Vec<double>::Zero(3);
  update_bias<double>(b3, {2, 2, 2}, 0.5);
  REQUIRE(b3.isZero());
}

TEST_CASE("moe balance: bias updates drive a skewed router's max/mean load down", "[moe][balance]") {
  // Fixed logits with a strong per-expert skew (expert e's logits shifted by 3·(e/E − 1/2)): some
  // experts are far more popular than others. Each step routes the same tokens with the current
  // bias, counts, and updates the bias with γ = 0.002.
  const RouterConfig c = tiny_router();
  const int tokens = 1024;
  Mat<float> logits = random_mat<float>(tokens, c.n_routed, 31);
  for (int e = 0; e < c.n_routed; ++e) logits.col(e).array() += 3.0f * (static_cast<float>(e) / c.n_routed - 0.5f);
  const Mat<float> scores = sigmoid(logits);
  Vec<float> bias = Vec<float>::Zero(c.n_routed);

  const LoadStats before = load_stats(expert_counts(select_experts<float>(c, scores, bias), c.n_routed));
  std::vector<int64_t> counts;
  for (int step = 0; step < 400; ++step) {
    counts = expert_counts(select_experts<float>(c, scores, bias), c.n_routed);
    update_bias<float>(bias, counts, 0.002);
  }
  const LoadStats after = load_stats(expert_counts(select_experts<float>(c, scores, bias), c.n_routed));
  INFO("max/mean before " << before.max_over_mean << ", after " << after.max_over_mean);
  REQUIRE(before.max_over_mean > 2.0);
  REQUIRE(after.max_over_mean < 1.25);
  // popular experts ended with lower biases than unpopular ones
  REQUIRE(bias(c.n_routed - 1) < bias(0));
}

TEST_CASE("moe balance: sequence-wise balance loss values", "[moe][balance]") {
  const RouterConfig c = tiny_router();
  const int seq_len = 8, n_seq = 3;
  const Mat<double> scores = sigmoid(random_mat(seq_len * n_seq, c.n_routed, 41));
  const Routing r = select_experts<double>(c, scores, Vec<double>::Zero(c.n_routed));
  const double alpha = 1e-4;
  const BalanceLoss<double> L = balance_loss_forward<double>(r, scores, seq_len, alpha);
  REQUIRE(L.f.rows() == n_seq);
  double total = 0;
  for (int q = 0; q < n_seq; ++q) {
    // Σ_i f_i = E (the counts sum to K·T), Σ_i P_i = 1
    CHECK(L.f.row(q).sum() == Approx(c.n_routed).epsilon(1e-12));
    CHECK(L.P.row(q).sum() == Approx(1.0).epsilon(1e-12));
    CHECK(L.per_sequence[q] == Approx(alpha * L.f.row(q).dot(L.P.row(q))).epsilon(1e-12));
    total += L.per_sequence[q];
  }
  CHECK(L.loss == Approx(total).epsilon(1e-12));

  // Perfectly uniform: every expert chosen equally (f_i = 1) and equal scores (P_i = 1/E) → L = α.
  Routing u;
  u.tokens = 4;
  u.top_k = 4;
  for (int e = 0; e < 16; ++e) u.expert.push_back(e);
  const BalanceLoss<double> U = balance_loss_forward<double>(u, Mat<double>::Constant(4, 16, 0.3), 4, 0.5);
  CHECK(U.loss == Approx(0.5).epsilon(1e-12));
  REQUIRE_THROWS_AS(balance_loss_forward<double>(u, Mat<double>::Constant(4, 16, 0.3), 3, 0.5), std::invalid_argument);
}

TEST_CASE("moe balance: balance-loss gradient through the router matches finite differences",
          "[moe][balance]") {
  const RouterConfig c = tiny_router();
  const int seq_len = 5, n_seq = 2;
  Mat<double> logits = random_mat(seq_len * n_seq, c.n_routed, 51);
  RouterState<double> st;
  st.scores = sigmoid(logits);
  st.routing = select_experts<double>(c, st.scores, Vec<double>::Zero(c.n_routed));
  st.gate = gate_weights<double>(c, st.scores, st.routing);
  const double alpha = 0.3, d_loss = 0.7;
  const Routing fixed = st.routing;  // f is constant: the selection is held fixed
  auto loss = [&] { return d_loss * balance_loss_forward<double>(fixed, sigmoid(logits), seq_len, alpha).loss; };

  const BalanceLoss<double> L = balance_loss_forward<double>(st.routing, st.scores, seq_len, alpha);
  const Mat<double> d_scores = balance_loss_backward<double>(L, st.scores, seq_len, alpha, d_loss);
  const Mat<double> zero_gate = Mat<double>::Zero(st.routing.tokens, c.top_k);
  const Mat<double> d_logits = router_backward_logits<double>(c, st, zero_gate, &d_scores);
  CHECK(rel_err(d_logits, finite_diff(logits, loss)) < 1e-7);
}
