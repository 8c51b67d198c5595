#include <catch2/catch.hpp>

#include <vector>

#include "exec/ops/adamw/adamw.h"
#include "exec/ops/rounding.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

TEST_CASE("adamw: two steps against a hand computation", "[nn][adamw]") {
  // p = 1, g1 = 0.5, g2 = -0.25, lr 0.1, wd 0.1, β1 0.9, β2 0.95, eps 1e-8; and a second
  // element with no weight decay effect (p = 0) and g = 0 then 1.
  // step 1: m = 0.05, v = 0.0125; m̂ = 0.5, v̂ = 0.25
  //   p = 1·(1 − 0.01) − 0.1 · 0.5/(0.5 + 1e-8) = 0.99 − 0.099999998 = 0.890000002
  // step 2: m = 0.045 − 0.025 = 0.02, v = 0.011875 + 0.003125 = 0.015
  //   bias corrections 1 − 0.81 = 0.19, 1 − 0.9025 = 0.0975
  //   p = 0.890000002·0.99 − (0.1/0.19) · 0.02/(sqrt(0.015)/sqrt(0.0975) + 1e-8)
  //     = 0.881100002 − 0.526315789 · 0.02/0.392232270 = 0.881100002 − 0.026836945 = 0.854263057
  // element 2: step 1: m = 0, v = 0 → p stays 0; step 2: m = 0.1, v = 0.05,
  //   m̂ = 0.1/0.19 = 0.526315789, v̂ = 0.05/0.0975 = 0.512820513, sqrt = 0.716114874
  //   p = 0 − 0.1 · 0.526315789/0.716114874 = −0.073495999
  std::vector<float> p = {1.0f, 0.0f}, m(2, 0.0f), v(2, 0.0f);
  AdamWConfig c;
  c.lr = 0.1;
  std::vector<float> g1 = {0.5f, 0.0f}, g2 = {-0.25f, 1.0f};
  adamw_step(p, g1, m, v, 1, c);
  CHECK(m[0] == Approx(0.05).epsilon(1e-6));
  CHECK(v[0] == Approx(0.0125).epsilon(1e-6));
  CHECK(p[0] == Approx(0.890000002).epsilon(3e-7));
  CHECK(p[1] == 0.0f);
  adamw_step(p, g2, m, v, 2, c);
  CHECK(m[0] == Approx(0.02).epsilon(1e-5));
  CHECK(v[0] == Approx(0.015).epsilon(1e-5));
  CHECK(p[0] == Approx(0.854263057).epsilon(3e-7));
  CHECK(p[1] == Approx(-0.073495999).epsilon(3e-7));
  // deterministic and independent of how the span is split
  std::vector<float> q = {1.0f, 0.0f}, mq(2, 0.0f), vq(2, 0.0f);
  for (int64_t t = 1; t <= 2; ++t) {
    const std::vector<float>& g = t == 1 ? g1 : g2;
    for (size_t i = 0; i < 2; ++i)
      adamw_step(std::span<float>(q).subspan(i, 1), std::span<const float>(g).subspan(i, 1),
                 std::span<float>(mq).subspan(i, 1), std::span<float>(vq).subspan(i, 1), t, c);
  }
  CHECK(std::bit_cast<uint32_t>(q[0]) == std::bit_cast<uint32_t>(p[0]));
  CHECK(std::bit_cast<uint32_t>(q[1]) == std::bit_cast<uint32_t>(p[1]));
  // BF16 moments are BF16 values
  c.bf16_moments = true;
  std::vector<float> r = {1.0f}, mr = {0.0f}, vr = {0.0f}, gr = {0.3f};
  adamw_step(r, gr, mr, vr, 1, c);
  CHECK(mr[0] == bf16_round(mr[0]));
  CHECK(vr[0] == bf16_round(vr[0]));
  CHECK(mr[0] == Approx(0.03).epsilon(1e-2));
  CHECK(sum_of_squares(std::vector<float>{3.0f, 4.0f}) == 25.0);
}
