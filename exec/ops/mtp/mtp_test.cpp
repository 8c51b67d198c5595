#include <catch2/catch.hpp>

#include <vector>

#include "exec/ops/mtp/mtp.h"
#include "exec/ops/rmsnorm/rmsnorm.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("mtp: input projection backward matches finite differences", "[nn][mtp]") {
  const int64_t M = 8, H = 12;
  Mat<double> h = random_mat(M, H, 1), e = random_mat(M, H, 2);
  Mat<double> hn = random_mat(H, 1, 3, 0.2).array() + 1.0, en = random_mat(H, 1, 4, 0.2).array() + 1.0;
  MtpProjWeights<double> w{hn.col(0), en.col(0), random_mat(H, 2 * H, 5, 0.3)};
  const Mat<double> R = random_mat(M, H, 6);
  const double eps = 1e-6;
  auto loss = [&] {
    w.hnorm = hn.col(0);
    w.enorm = en.col(0);
    return dot(mtp_input_forward(w, h, e, eps, Numerics::exact, nullptr), R);
  };
  MtpSaved<double> saved;
  const Mat<double> y = mtp_input_forward(w, h, e, eps, Numerics::exact, &saved);
  // the checkpoint's column order: the embedding's half first
  const Mat<double> ref = rmsnorm_forward(e, w.enorm, eps) * w.eh_proj.leftCols(H).transpose() +
                          rmsnorm_forward(h, w.hnorm, eps) * w.eh_proj.rightCols(H).transpose();
  CHECK(rel_err(y, ref) < 1e-13);
  const MtpInputGrad<double> g = mtp_input_backward_input(w, saved, R, eps, Numerics::exact);
  MtpProjWeights<double> gw{Vec<double>::Zero(H), Vec<double>::Zero(H), Mat<double>::Zero(H, 2 * H)};
  mtp_input_backward_weight(saved, g, R, eps, Numerics::exact, gw);
  CHECK(rel_err(g.dh, finite_diff(h, loss)) < 1e-6);
  CHECK(rel_err(g.d_emb, finite_diff(e, loss)) < 1e-6);
  CHECK(rel_err(gw.eh_proj, finite_diff(w.eh_proj, loss)) < 1e-6);
  CHECK(rel_err(Mat<double>(gw.hnorm), finite_diff(hn, loss)) < 1e-6);
  CHECK(rel_err(Mat<double>(gw.enorm), finite_diff(en, loss)) < 1e-6);
}
