#include <catch2/catch.hpp>

#include "exec/ops/linear/linear.h"
#include "exec/ops/rounding.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("linear: backward input and weight match finite differences", "[nn][linear]") {
  Mat<double> x = random_mat(7, 12, 1), W = random_mat(5, 12, 2), R = random_mat(7, 5, 3);
  auto loss = [&] { return dot(linear_forward(x, W, Numerics::exact), R); };
  const Mat<double> dx = linear_backward_input(R, W, Numerics::exact);
  Mat<double> dW = Mat<double>::Zero(5, 12);
  linear_backward_weight(R, x, Numerics::exact, dW);
  CHECK(rel_err(dx, finite_diff(x, loss)) < 1e-6);
  CHECK(rel_err(dW, finite_diff(W, loss)) < 1e-6);
  // grads accumulate
  Mat<double> dW2 = dW;
  linear_backward_weight(R, x, Numerics::exact, dW2);
  CHECK((dW2 - 2 * dW).norm() < 1e-12 * dW.norm());
}

TEST_CASE("linear: exact is a fixed-order GEMM (row bits independent of M)", "[nn][linear]") {
  const int64_t K = 96, N = 40;
  const Mat<float> W = random_mat(N, K, 11).cast<float>();
  const Mat<float> x300 = random_mat(300, K, 12).cast<float>();
  const Mat<float> y300 = linear_forward(x300, W, Numerics::exact);
  const Mat<float> dy300 = random_mat(300, N, 13).cast<float>();
  const Mat<float> dx300 = linear_backward_input(dy300, W, Numerics::exact);
  for (int64_t row : {0, 5, 123, 299}) {
    const Mat<float> x1 = x300.row(row);
    CHECK(bit_equal(linear_forward(x1, W, Numerics::exact), Mat<float>(y300.row(row))));
    const Mat<float> dy1 = dy300.row(row);
    CHECK(bit_equal(linear_backward_input(dy1, W, Numerics::exact), Mat<float>(dx300.row(row))));
    // the row inside a 7-row call, at position 3, with different neighbours
    Mat<float> x7 = random_mat(7, K, 100 + row).cast<float>();
    x7.row(3) = x300.row(row);
    CHECK(bit_equal(Mat<float>(linear_forward(x7, W, Numerics::exact).row(3)),
                    Mat<float>(y300.row(row))));
  }
  // weight grads: rows split over calls (1, 7, 292), in order, give the same bits as one call
  Mat<float> dW_all = Mat<float>::Zero(N, K), dW_split = Mat<float>::Zero(N, K);
  linear_backward_weight(dy300, x300, Numerics::exact, dW_all);
  int64_t r0 = 0;
  for (int64_t m : {1, 7, 292}) {
    linear_backward_weight(Mat<float>(dy300.middleRows(r0, m)), Mat<float>(x300.middleRows(r0, m)),
                           Numerics::exact, dW_split);
    r0 += m;
  }
  CHECK(bit_equal(dW_all, dW_split));
  // and the order is the plain row order: a hand-written sum gives the same bits
  float ref = 0;
  for (int64_t i = 0; i < 300; ++i) ref += dy300(i, 7) * x300(i, 9);
  CHECK(std::bit_cast<uint32_t>(ref) == std::bit_cast<uint32_t>(dW_all(7, 9)));
  float yref = 0;
  for (int64_t k = 0; k < K; ++k) yref += x300(17, k) * W(3, k);
  CHECK(std::bit_cast<uint32_t>(yref) == std::bit_cast<uint32_t>(y300(17, 3)));
}

TEST_CASE("linear: float agrees with double; bf16 close to exact", "[nn][linear]") {
  const Mat<double> x = random_mat(33, 256, 21), W = random_mat(64, 256, 22, 0.05);
  const Mat<double> yd = linear_forward(x, W, Numerics::exact);
  const Mat<float> xf = x.cast<float>(), Wf = W.cast<float>();
  const Mat<float> yf = linear_forward(xf, Wf, Numerics::exact);
  CHECK(rel_err(yf.cast<double>(), yd) < 1e-6);
  // bf16: inputs and output rounded to 8 significant bits: relative error ~ 2^-8 per element
  const Mat<float> yb = linear_forward(xf, Wf, Numerics::bf16);
  const double eb = rel_err(yb.cast<double>(), yd);
  CHECK(eb < 1e-2);
  CHECK(eb > 1e-5);  // it does round
  for (int64_t i = 0; i < yb.size(); ++i) CHECK(bf16_round(yb.data()[i]) == yb.data()[i]);
  const Mat<double> dy = random_mat(33, 64, 23);
  const Mat<float> dxb = linear_backward_input(Mat<float>(dy.cast<float>()), Wf, Numerics::bf16);
  CHECK(rel_err(dxb.cast<double>(), linear_backward_input(dy, W, Numerics::exact)) < 1e-2);
  Mat<float> dWb = Mat<float>::Zero(64, 256);
  Mat<double> dWd = Mat<double>::Zero(64, 256);
  linear_backward_weight(Mat<float>(dy.cast<float>()), xf, Numerics::bf16, dWb);
  linear_backward_weight(dy, x, Numerics::exact, dWd);
  CHECK(rel_err(dWb.cast<double>(), dWd) < 1e-2);
  // double with bf16 numerics is refused
  CHECK_THROWS_AS(linear_forward(x, W, Numerics::bf16), std::invalid_argument);
}

TEST_CASE("bf16_round: round to nearest even", "[nn][linear]") {
  CHECK(bf16_round(1.0f) == 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0)
  CHECK(bf16_round(1.0f + 0x1p-8f) == 1.0f);
  // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6)
  CHECK(bf16_round(1.0f + 3 * 0x1p-8f) == 1.0f + 0x1p-6f);
  CHECK(bf16_round(1.0f + 0x1p-8f + 0x1p-20f) == 1.0f + 0x1p-7f);
  CHECK(std::isnan(bf16_round(std::nanf(""))));
  CHECK(std::isinf(bf16_round(INFINITY)));
}

TEST_CASE("linear: fp8 (exec/fp8) close to exact; rows independent of M", "[nn][linear][fp8]") {
  // K = 256, N = 192: whole and partial 128-blocks. E4M3 keeps 3 mantissa bits (relative rounding
  // ≤ 2^-4 per operand); block scaling and a BF16 output add little: a few % in norm.
  const int64_t M = 70, N = 192, K = 256;
  const Mat<double> x = random_mat(M, K, 31), W = random_mat(N, K, 32, 0.05), dy = random_mat(M, N, 33);
  const Mat<float> xf = x.cast<float>(), Wf = W.cast<float>(), dyf = dy.cast<float>();
  const Mat<float> y8 = linear_forward(xf, Wf, Numerics::fp8);
  const double ey = rel_err(y8.cast<double>(), linear_forward(x, W, Numerics::exact));
  CHECK(ey < 0.05);  // measured 0.036
  CHECK(ey > 1e-3);  // it does quantise
  for (int64_t i = 0; i < y8.size(); ++i) CHECK(bf16_round(y8.data()[i]) == y8.data()[i]);
  const Mat<float> dx8 = linear_backward_input(dyf, Wf, Numerics::fp8);
  CHECK(rel_err(dx8.cast<double>(), linear_backward_input(dy, W, Numerics::exact)) < 0.05);
  Mat<float> dW8 = Mat<float>::Constant(N, K, 1.0f);  // accumulates onto what is there
  Mat<double> dWd = Mat<double>::Zero(N, K);
  linear_backward_weight(dyf, xf, Numerics::fp8, dW8);
  linear_backward_weight(dy, x, Numerics::exact, dWd);
  CHECK(rel_err(Mat<double>(dW8.cast<double>().array() - 1.0), dWd) < 0.05);
  // an fprop row does not depend on the other rows
  const Mat<float> x1 = xf.row(41);
  CHECK(bit_equal(linear_forward(x1, Wf, Numerics::fp8), Mat<float>(y8.row(41))));
  // empty inputs (an expert with no tokens) are fine
  CHECK(linear_forward(Mat<float>(0, K), Wf, Numerics::fp8).rows() == 0);
}
