// The MoE layer: EP runs (ep = 2, 4; buffers moved between simulated members) equal the
// single-rank reference bit for bit, forward and backward; the whole layer's backward against
// central finite differences; the init does not depend on ep.
#include <catch2/catch.hpp>
#include <string>

#include "exec/ops/balance/balance.h"
#include "exec/ops/moe_layer/moe_layer.h"
#include "tests/exec/moe_test_util.h"
#include "tests/test_paths.h"

using namespace tandem::moe;
using tandem::moe::test::all_to_all;
using tandem::moe::test::bit_equal;
using tandem::moe::test::dot;
using tandem::moe::test::finite_diff;
using tandem::moe::test::random_mat;
using tandem::moe::test::rel_err;
using tandem::nn::Numerics;

namespace {

MoeConfig small_config(int hidden, int inter, int E, int G, int M, int K, int n_shared) {
  MoeConfig c;
  c.router.n_routed = E;
  c.router.n_group = G;
  c.router.topk_group = M;
  c.router.top_k = K;
  c.router.routed_scaling_factor = 2.5;
  c.router.norm_topk_prob = true;
  c.ep = EpLayout(E, 1);
  c.hidden = hidden;
  c.moe_inter = inter;
  c.n_shared = n_shared;
  return c;
}

template <class T>
bool ffn_bit_equal(const tandem::nn::FfnWeights<T>& a, const tandem::nn::FfnWeights<T>& b) {
  return bit_equal(a.gate, b.gate) && bit_equal(a.up, b.up) && bit_equal(a.down, b.down);
}

// Same selection bias on every member: experts 3 and 10 are never chosen (segments of zero
// rows), the others get a little noise.
template <class T>
Vec<T> test_bias(int E) {
  Vec<T> b = random_mat<T>(E, 1, 77, 0.02);
  b(3) = T(-10);
  if (E > 10) b(10) = T(-10);
  return b;
}

template <class T>
void check_ep_equals_local(const MoeConfig& base, int ep_size, const std::vector<int>& tokens, uint64_t seed) {
  const int E = base.router.n_routed, H = base.hidden, K = base.router.top_k;
  MoeConfig lc = base, ec = base;
  lc.ep = EpLayout(E, 1);
  ec.ep = EpLayout(E, ep_size);
  REQUIRE(static_cast<int>(tokens.size()) == ep_size);

  // Weights: the reference's and each member's, from the same seed.
  MoeWeights<T> wl = init_moe_weights<T>(lc, 0, seed);
  wl.bias = test_bias<T>(E);
  std::vector<MoeWeights<T>> we;
  for (int r = 0; r < ep_size; ++r) {
    we.push_back(init_moe_weights<T>(ec, r, seed));
    we[r].bias = wl.bias;
    REQUIRE(bit_equal(we[r].router, wl.router));
    REQUIRE(ffn_bit_equal(we[r].shared, wl.shared));
    REQUIRE(we[r].first_expert == ec.ep.first_expert(r));
    for (int i = 0; i < ec.ep.experts_per_rank(); ++i)
      REQUIRE(ffn_bit_equal(we[r].experts[i], wl.experts[we[r].first_expert + i]));
  }

  int total = 0;
  std::vector<int> off;
  for (int n : tokens) off.push_back(total), total += n;
  const Mat<T> X = random_mat<T>(total, H, seed + 1);
  const Mat<T> dOut = random_mat<T>(total, H, seed + 2);
  const Mat<T> dS = random_mat<T>(total, E, seed + 3, 0.1);  // stands in for the balance-loss grad

  // Reference.
  MoeLocalState<T> ls;
  const Mat<T> out_l = moe_forward_local<T>(lc, wl, X, &ls);
  REQUIRE(ls.experts.layout.rows[3] == 0);
  bool some_padding = false;
  for (int e = 0; e < E; ++e) some_padding = some_padding || (ls.experts.layout.rows[e] % 128 != 0);
  REQUIRE(some_padding);
  MoeGrads<T> gl = zero_grads(wl);
  const Mat<T> dx_l = moe_backward_local<T>(lc, wl, ls, dOut, gl, &dS);

  // EP forward.
  std::vector<Mat<T>> x(ep_size), dout(ep_size), ds(ep_size);
  std::vector<MoeTokenState<T>> st(ep_size);
  std::vector<MoeExpertState<T>> es(ep_size);
  std::vector<tandem::nn::FfnSaved<T>> ss(ep_size);
  std::vector<std::vector<Buffer>> send(ep_size), back(ep_size);
  for (int r = 0; r < ep_size; ++r) {
    x[r] = X.middleRows(off[r], tokens[r]);
    dout[r] = dOut.middleRows(off[r], tokens[r]);
    ds[r] = dS.middleRows(off[r], tokens[r]);
    st[r] = route<T>(ec, we[r], x[r]);
    send[r] = dispatch_pack<T>(ec, st[r], x[r]);
  }
  auto recv = all_to_all(send);
  for (int r = 0; r < ep_size; ++r) {
    es[r] = dispatch_unpack<T>(ec, r, recv[r]);
    experts_forward<T>(ec, we[r], es[r]);
    back[r] = combine_pack<T>(ec, es[r]);
  }
  auto got = all_to_all(back);
  for (int r = 0; r < ep_size; ++r) {
    Mat<T> out = combine<T>(ec, st[r], got[r]);
    out += shared_expert_forward<T>(ec, we[r], x[r], &ss[r]);
    INFO("member " << r);
    REQUIRE(std::vector<int32_t>(ls.token.router.routing.expert.begin() + off[r] * K,
                                 ls.token.router.routing.expert.begin() + (off[r] + tokens[r]) * K) ==
            st[r].router.routing.expert);
    REQUIRE(bit_equal(out, out_l.middleRows(off[r], tokens[r])));
  }

  // EP backward.
  std::vector<std::vector<Buffer>> sendb(ep_size), backb(ep_size);
  for (int r = 0; r < ep_size; ++r) sendb[r] = combine_backward_pack<T>(ec, st[r], dout[r]);
  auto recvb = all_to_all(sendb);
  for (int r = 0; r < ep_size; ++r) {
    combine_backward_unpack<T>(ec, es[r], recvb[r]);
    experts_backward_input<T>(ec, we[r], es[r]);
    backb[r] = dispatch_backward_pack<T>(ec, es[r]);
  }
  auto gotb = all_to_all(backb);
  std::vector<MoeGrads<T>> ge;
  std::vector<tandem::nn::FfnInputGrad<T>> gs(ep_size);
  for (int r = 0; r < ep_size; ++r) {
    INFO("member " << r);
    Mat<T> dx = dispatch_backward_unpack<T>(ec, st[r], gotb[r]);
    dx += route_backward_input<T>(ec, we[r], st[r], &ds[r]);
    gs[r] = shared_expert_backward_input<T>(ec, we[r], ss[r], dout[r]);
    dx += gs[r].dx;
    REQUIRE(bit_equal(st[r].d_gate, ls.token.d_gate.middleRows(off[r], tokens[r])));
    REQUIRE(bit_equal(dx, dx_l.middleRows(off[r], tokens[r])));
    ge.push_back(zero_grads(we[r]));
    experts_backward_weight<T>(ec, es[r], ge[r]);
    route_backward_weight<T>(ec, st[r], ge[r]);
    shared_expert_backward_weight<T>(ec, ss[r], gs[r], dout[r], ge[r]);
    for (int i = 0; i < ec.ep.experts_per_rank(); ++i)
      REQUIRE(ffn_bit_equal(ge[r].experts[i], gl.experts[we[r].first_expert + i]));
  }
  // Replicated weights: per-member partials. Their sum is the all-reduce's; it matches the
  // reference to rounding. Accumulated into one matrix in member order (nn's in-place, row-order
  // weight gradient in exact numerics), they reproduce the reference bit for bit.
  Mat<T> router_sum = Mat<T>::Zero(E, H);
  for (int r = 0; r < ep_size; ++r) router_sum += ge[r].router;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  REQUIRE((router_sum - gl.router).norm() <= tol * (gl.router.norm() + 1e-30));
  if (ec.numerics == Numerics::exact) {
    Mat<T> acc = Mat<T>::Zero(E, H);
    auto shared = zero_grads(wl).shared;
    for (int r = 0; r < ep_size; ++r) {
      router_backward_weight<T>(st[r].router, st[r].d_logits, acc);
      tandem::nn::ffn_backward_weight<T>(ss[r], gs[r], dout[r], ec.numerics, shared);
    }
    REQUIRE(bit_equal(acc, gl.router));
    REQUIRE(ffn_bit_equal(shared, gl.shared));
  }
}

}  // namespace

TEMPLATE_TEST_CASE("moe layer: EP (ep = 2, 4) equals the single-rank reference bit for bit", "[moe][layer]",
                   float, double) {
  using T = TestType;
  const MoeConfig c = small_config(32, 16, 16, 4, 2, 4, 1);
  SECTION("ep = 2") { check_ep_equals_local<T>(c, 2, {13, 29}, 1000); }
  SECTION("ep = 4, one member without tokens") { check_ep_equals_local<T>(c, 4, {5, 0, 17, 9}, 2000); }
  SECTION("ep = 4, DeepSeek-V3 wires (FP8 dispatch-shaped, BF16 combine-shaped)") {
    MoeConfig w = c;
    w.use_deepseek_wires();
    check_ep_equals_local<T>(w, 4, {11, 6, 8, 20}, 3000);
  }
}

TEST_CASE("moe layer: EP equals the reference with BF16 and FP8 expert numerics", "[moe][layer]") {
  MoeConfig c = small_config(32, 16, 16, 4, 2, 4, 1);
  c.use_deepseek_wires();
  SECTION("bf16") {
    c.numerics = Numerics::bf16;
    check_ep_equals_local<float>(c, 2, {21, 14}, 4000);
  }
  SECTION("fp8") {
    c.numerics = Numerics::fp8;
    check_ep_equals_local<float>(c, 4, {9, 12, 0, 15}, 5000);
  }
}

TEST_CASE("moe layer: tiny-moe card, ep = 4, equals the reference bit for bit", "[moe][layer]") {
  const tandem::ModelCard card =
      tandem::load_model_card(tandem::test::repo("models/tiny-moe.yaml")).value();
  MoeConfig c = MoeConfig::from_card(card, 1);
  REQUIRE(c.hidden == 256);
  REQUIRE(c.router.n_routed == 16);
  REQUIRE(c.router.n_group == 4);
  REQUIRE(c.router.topk_group == 2);
  REQUIRE(c.router.top_k == 4);
  REQUIRE(c.router.routed_scaling_factor == 2.5);
  REQUIRE(c.n_shared == 1);
  check_ep_equals_local<float>(c, 4, {16, 24, 8, 16}, 6000);
}

TEST_CASE("moe layer: backward matches central finite differences (double, selection fixed)",
          "[moe][layer]") {
  MoeConfig c = small_config(6, 4, 8, 4, 2, 3, 1);
  MoeWeights<double> w = init_moe_weights<double>(c, 0, 9);
  // larger weights than the 0.006 init so every term matters
  uint64_t s = 900;
  w.router = random_mat(8, 6, s++, 1.0);
  w.bias = random_mat(8, 1, s++, 0.1);
  for (auto& e : w.experts) {
    e.gate = random_mat(4, 6, s++, 0.6);
    e.up = random_mat(4, 6, s++, 0.6);
    e.down = random_mat(6, 4, s++, 0.6);
  }
  w.shared.gate = random_mat(4, 6, s++, 0.6);
  w.shared.up = random_mat(4, 6, s++, 0.6);
  w.shared.down = random_mat(6, 4, s++, 0.6);
  const int seq_len = 2;
  const double alpha = 0.1;
  Mat<double> x = random_mat(4, 6, s++);
  const Mat<double> R = random_mat(4, 6, s++);

  MoeLocalState<double> st;
  moe_forward_local<double>(c, w, x, &st);
  const Routing fixed = st.token.router.routing;
  const BalanceLoss<double> L = balance_loss_forward<double>(fixed, st.token.router.scores, seq_len, alpha);
  const Mat<double> dS = balance_loss_backward<double>(L, st.token.router.scores, seq_len, alpha, 1.0);
  MoeGrads<double> g = zero_grads(w);
  const Mat<double> dx = moe_backward_local<double>(c, w, st, R, g, &dS);

  auto loss = [&] {
    MoeLocalState<double> t;
    const Mat<double> out = moe_forward_local<double>(c, w, x, &t, &fixed);
    return dot(out, R) + balance_loss_forward<double>(fixed, t.token.router.scores, seq_len, alpha).loss;
  };
  const double tol = 1e-6;
  CHECK(rel_err(dx, finite_diff(x, loss)) < tol);
  CHECK(rel_err(g.router, finite_diff(w.router, loss)) < tol);
  int unused = 0;
  for (size_t e = 0; e < w.experts.size(); ++e) {
    INFO("expert " << e);
    const Mat<double> fd_gate = finite_diff(w.experts[e].gate, loss);
    const Mat<double> fd_up = finite_diff(w.experts[e].up, loss);
    const Mat<double> fd_down = finite_diff(w.experts[e].down, loss);
    if (st.experts.layout.rows[e] == 0) {  // chosen by no token: no gradient either way
      ++unused;
      CHECK(g.experts[e].gate.isZero());
      CHECK(fd_gate.isZero());
      continue;
    }
    CHECK(rel_err(g.experts[e].gate, fd_gate) < tol);
    CHECK(rel_err(g.experts[e].up, fd_up) < tol);
    CHECK(rel_err(g.experts[e].down, fd_down) < tol);
  }
  CHECK(unused < 8);
  CHECK(rel_err(g.shared.gate, finite_diff(w.shared.gate, loss)) < tol);
  CHECK(rel_err(g.shared.up, finite_diff(w.shared.up, loss)) < tol);
  CHECK(rel_err(g.shared.down, finite_diff(w.shared.down, loss)) < tol);
}
