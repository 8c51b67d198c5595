#include <catch2/catch.hpp>

#include "exec/ops/linear/ffn.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("ffn: SwiGLU backward matches finite differences", "[nn][ffn]") {
  const int64_t M = 16, H = 24, I = 40;
  FfnWeights<double> w{random_mat(I, H, 1, 0.3), random_mat(I, H, 2, 0.3), random_mat(H, I, 3, 0.3)};
  Mat<double> x = random_mat(M, H, 4);
  const Mat<double> R = random_mat(M, H, 5);
  auto loss = [&] { return dot(ffn_forward(w, x, Numerics::exact, nullptr), R); };
  FfnSaved<double> saved;
  const Mat<double> y = ffn_forward(w, x, Numerics::exact, &saved);
  CHECK(dot(y, R) == loss());
  const FfnInputGrad<double> g = ffn_backward_input(w, saved, R, Numerics::exact);
  FfnWeights<double> grads{Mat<double>::Zero(I, H), Mat<double>::Zero(I, H), Mat<double>::Zero(H, I)};
  ffn_backward_weight(saved, g, R, Numerics::exact, grads);
  CHECK(rel_err(g.dx, finite_diff(x, loss)) < 1e-6);
  CHECK(rel_err(grads.gate, finite_diff(w.gate, loss)) < 1e-6);
  CHECK(rel_err(grads.up, finite_diff(w.up, loss)) < 1e-6);
  CHECK(rel_err(grads.down, finite_diff(w.down, loss)) < 1e-6);
}

TEST_CASE("ffn: float agrees with double, bf16 close", "[nn][ffn]") {
  const int64_t M = 20, H = 64, I = 128;
  FfnWeights<double> w{random_mat(I, H, 1, 0.1), random_mat(I, H, 2, 0.1), random_mat(H, I, 3, 0.1)};
  const Mat<double> x = random_mat(M, H, 4);
  FfnWeights<float> wf{w.gate.cast<float>(), w.up.cast<float>(), w.down.cast<float>()};
  const Mat<float> xf = x.cast<float>();
  const Mat<double> yd = ffn_forward(w, x, Numerics::exact, nullptr);
  CHECK(rel_err(ffn_forward(wf, xf, Numerics::exact, nullptr).cast<double>(), yd) < 1e-5);
  CHECK(rel_err(ffn_forward(wf, xf, Numerics::bf16, nullptr).cast<double>(), yd) < 2e-2);
  // fp8: three E4M3 GEMMs in a row (the SwiGLU in float between them)
  const double e8 = rel_err(ffn_forward(wf, xf, Numerics::fp8, nullptr).cast<double>(), yd);
  CHECK(e8 < 0.09);  // measured 0.061
  CHECK(e8 > 1e-3);
}

TEST_CASE("ffn: row bits independent of the token count; split weight grads equal", "[nn][ffn]") {
  // an expert sees different token counts under different schedules: its rows must not care
  const int64_t H = 32, I = 48;
  const FfnWeights<float> w{random_mat(I, H, 1, 0.2).cast<float>(), random_mat(I, H, 2, 0.2).cast<float>(),
                            random_mat(H, I, 3, 0.2).cast<float>()};
  const Mat<float> x = random_mat(37, H, 4).cast<float>(), dy = random_mat(37, H, 5).cast<float>();
  FfnSaved<float> s;
  const Mat<float> y = ffn_forward(w, x, Numerics::exact, &s);
  const FfnInputGrad<float> g = ffn_backward_input(w, s, dy, Numerics::exact);
  FfnWeights<float> gw_all{Mat<float>::Zero(I, H), Mat<float>::Zero(I, H), Mat<float>::Zero(H, I)};
  FfnWeights<float> gw_split = gw_all;
  ffn_backward_weight(s, g, dy, Numerics::exact, gw_all);
  int64_t r0 = 0;
  for (int64_t m : {1, 5, 31}) {
    const Mat<float> xm = x.middleRows(r0, m), dym = dy.middleRows(r0, m);
    FfnSaved<float> sm;
    CHECK(test::bit_equal(ffn_forward(w, xm, Numerics::exact, &sm), Mat<float>(y.middleRows(r0, m))));
    const FfnInputGrad<float> gm = ffn_backward_input(w, sm, dym, Numerics::exact);
    CHECK(test::bit_equal(gm.dx, Mat<float>(g.dx.middleRows(r0, m))));
    ffn_backward_weight(sm, gm, dym, Numerics::exact, gw_split);
    r0 += m;
  }
  CHECK(test::bit_equal(gw_all.gate, gw_split.gate));
  CHECK(test::bit_equal(gw_all.up, gw_split.up));
  CHECK(test::bit_equal(gw_all.down, gw_split.down));
}
