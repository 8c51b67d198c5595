#include <catch2/catch.hpp>

#include "exec/ops/rmsnorm/rmsnorm.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("rmsnorm: forward is HF's formula; backward matches finite differences", "[nn][rmsnorm]") {
  Mat<double> x = random_mat(6, 20, 1);
  Mat<double> wm = random_mat(20, 1, 2, 0.5).array() + 1.0;
  Vec<double> w = wm.col(0);
  const double eps = 1e-6;
  const Mat<double> y = rmsnorm_forward(x, w, eps);
  for (int64_t i = 0; i < x.rows(); ++i) {
    const double r = 1.0 / std::sqrt(x.row(i).squaredNorm() / 20.0 + eps);
    for (int64_t j = 0; j < 20; ++j) CHECK(y(i, j) == Approx(w[j] * x(i, j) * r).epsilon(1e-14));
  }
  const Mat<double> R = random_mat(6, 20, 3);
  auto loss = [&] {
    Vec<double> ww = wm.col(0);
    return dot(rmsnorm_forward(x, ww, eps), R);
  };
  w = wm.col(0);
  const Mat<double> dx = rmsnorm_backward_input(x, w, eps, R);
  Vec<double> dw = Vec<double>::Zero(20);
  rmsnorm_backward_weight(x, eps, R, dw);
  CHECK(rel_err(dx, finite_diff(x, loss)) < 1e-6);
  CHECK(rel_err(Mat<double>(dw), finite_diff(wm, loss)) < 1e-6);
}

TEST_CASE("rmsnorm: rows independent, weight grad accumulates rows in order", "[nn][rmsnorm]") {
  const Mat<float> x = random_mat(50, 32, 4).cast<float>(), dy = random_mat(50, 32, 5).cast<float>();
  const Vec<float> w = Vec<float>::Constant(32, 1.25f);
  const Mat<float> y = rmsnorm_forward(x, w, 1e-6);
  const Mat<float> dx = rmsnorm_backward_input(x, w, 1e-6, dy);
  const Mat<float> x1 = x.row(17), dy1 = dy.row(17);
  CHECK(bit_equal(rmsnorm_forward(x1, w, 1e-6), Mat<float>(y.row(17))));
  CHECK(bit_equal(rmsnorm_backward_input(x1, w, 1e-6, dy1), Mat<float>(dx.row(17))));
  Vec<float> dw_all = Vec<float>::Zero(32), dw_split = Vec<float>::Zero(32);
  rmsnorm_backward_weight(x, 1e-6, dy, dw_all);
  rmsnorm_backward_weight(Mat<float>(x.topRows(13)), 1e-6, Mat<float>(dy.topRows(13)), dw_split);
  rmsnorm_backward_weight(Mat<float>(x.bottomRows(37)), 1e-6, Mat<float>(dy.bottomRows(37)), dw_split);
  CHECK(bit_equal(dw_all, dw_split));
}
