#include <catch2/catch.hpp>

#include "exec/nn/ffn.h"
#include "nn_test_util.h"

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
