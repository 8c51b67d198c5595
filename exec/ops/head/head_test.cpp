#include <catch2/catch.hpp>

#include <vector>

#include "exec/ops/embedding/loss.h"
#include "exec/ops/head/head.h"
#include "exec/ops/rmsnorm/rmsnorm.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("head: final norm + projection backward matches finite differences", "[nn][head]") {
  const int64_t M = 6, H = 16, V = 20;
  Mat<double> h = random_mat(M, H, 5);
  Mat<double> proj = random_mat(V, H, 6, 0.3);
  Mat<double> nw = random_mat(H, 1, 7, 0.2).array() + 1.0;
  const std::vector<int32_t> tgt = {1, 5, 19, 0, 7, 7};
  const double eps = 1e-6, scale = 1.0 / 6;
  auto loss = [&] {
    const Vec<double> n = nw.col(0);
    return cross_entropy(head_forward(n, proj, h, eps, Numerics::exact, nullptr), tgt, scale).loss;
  };
  const Vec<double> n = nw.col(0);
  HeadSaved<double> saved;
  const Mat<double> logits = head_forward(n, proj, h, eps, Numerics::exact, &saved);
  CHECK(rel_err(logits, Mat<double>(rmsnorm_forward(h, n, eps) * proj.transpose())) < 1e-13);
  const CrossEntropy<double> ce = cross_entropy(logits, tgt, scale);
  const HeadInputGrad<double> g = head_backward_input(n, proj, saved, ce.dlogits, eps, Numerics::exact);
  Vec<double> dn = Vec<double>::Zero(H);
  Mat<double> dproj = Mat<double>::Zero(V, H);
  head_backward_weight(saved, g, ce.dlogits, eps, Numerics::exact, dn, dproj);
  CHECK(rel_err(g.dh, finite_diff(h, loss)) < 1e-6);
  CHECK(rel_err(dproj, finite_diff(proj, loss)) < 1e-6);
  CHECK(rel_err(Mat<double>(dn), finite_diff(nw, loss)) < 1e-6);
}
