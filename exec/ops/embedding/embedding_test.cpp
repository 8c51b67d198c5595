#include <catch2/catch.hpp>

#include <vector>

#include "exec/ops/embedding/embedding.h"
#include "exec/ops/embedding/loss.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("embedding: lookup; backward scatter-adds repeated tokens in row order", "[nn][embedding]") {
  const Mat<double> table = random_mat(10, 6, 1);
  const std::vector<int32_t> tok = {3, 7, 3, 0, 3, 9};
  const Mat<double> y = embedding_forward(table, tok);
  for (size_t i = 0; i < tok.size(); ++i) CHECK(y.row(static_cast<int64_t>(i)) == table.row(tok[i]));
  const Mat<double> dy = random_mat(6, 6, 2);
  Mat<double> dt = Mat<double>::Zero(10, 6);
  embedding_backward(tok, dy, dt);
  CHECK(dt.row(3) == Mat<double>(dy.row(0) + dy.row(2) + dy.row(4)));  // same order of additions
  CHECK(dt.row(7) == dy.row(1));
  CHECK(dt.row(0) == dy.row(3));
  CHECK(dt.row(9) == dy.row(5));
  CHECK(dt.row(1).isZero(0));
  // accumulates
  embedding_backward(tok, dy, dt);
  CHECK(dt.row(7) == Mat<double>(2 * dy.row(1)));
  // float: repeated-token sums are in row order (bitwise vs a hand loop)
  const Mat<float> dyf = random_mat(6, 6, 3).cast<float>();
  Mat<float> dtf = Mat<float>::Zero(10, 6);
  embedding_backward(tok, dyf, dtf);
  float ref = 0;
  ref += dyf(0, 2);
  ref += dyf(2, 2);
  ref += dyf(4, 2);
  CHECK(std::bit_cast<uint32_t>(ref) == std::bit_cast<uint32_t>(dtf(3, 2)));
  const std::vector<int32_t> bad = {10};
  CHECK_THROWS_AS(embedding_forward(table, bad), std::out_of_range);
}

TEST_CASE("cross_entropy: loss and dlogits = scale·(softmax − onehot); ignored rows", "[nn][loss]") {
  const Mat<double> logits = random_mat(5, 7, 4, 2.0);
  const std::vector<int32_t> tgt = {2, 0, -1, 6, 2};
  const double scale = 1.0 / 4.0;
  const CrossEntropy<double> ce = cross_entropy(logits, tgt, scale);
  double loss = 0;
  for (int64_t i = 0; i < 5; ++i) {
    if (tgt[i] < 0) {
      CHECK(ce.dlogits.row(i).isZero(0));
      continue;
    }
    const Eigen::RowVectorXd e = logits.row(i).array().exp();
    const double z = e.sum();
    loss += -std::log(e[tgt[i]] / z);
    for (int64_t j = 0; j < 7; ++j)
      CHECK(ce.dlogits(i, j) == Approx(scale * (e[j] / z - (j == tgt[i] ? 1.0 : 0.0))).margin(1e-15));
  }
  CHECK(ce.loss == Approx(scale * loss).epsilon(1e-13));
  // finite differences of the loss
  Mat<double> l = logits;
  auto f = [&] { return cross_entropy(l, tgt, scale).loss; };
  CHECK(rel_err(ce.dlogits, finite_diff(l, f)) < 1e-6);
  // each row's gradient sums to zero (softmax sums to 1)
  for (int64_t i = 0; i < 5; ++i) CHECK(std::abs(ce.dlogits.row(i).sum()) < 1e-15);
  // micro-batches with scale 1/total sum to the full batch
  const std::vector<int32_t> t1(tgt.begin(), tgt.begin() + 2), t2(tgt.begin() + 2, tgt.end());
  const double l1 = cross_entropy(Mat<double>(logits.topRows(2)), t1, scale).loss;
  const double l2 = cross_entropy(Mat<double>(logits.bottomRows(3)), t2, scale).loss;
  CHECK(l1 + l2 == Approx(ce.loss).epsilon(1e-14));
  // float: dlogits close to double
  const CrossEntropy<float> cf = cross_entropy(Mat<float>(logits.cast<float>()), tgt, scale);
  CHECK(rel_err(cf.dlogits.cast<double>(), ce.dlogits) < 1e-6);
  CHECK(cf.loss == Approx(ce.loss).epsilon(1e-6));
}
