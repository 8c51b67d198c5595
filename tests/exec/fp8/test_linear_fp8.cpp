// The three GEMMs of an FP8 linear layer: they are the documented quantise + GEMM compositions,
// close to the FP64 products, exact where the format allows, and they overwrite their outputs.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "common/signed_index.h"
#include "exec/fp8/block_gemm.h"
#include "exec/fp8/linear_fp8.h"
#include "exec/fp8/quantize.h"
#include "test_matrices.h"

using tandem::idx;

using namespace tandem::fp8;
using namespace tandem::fp8::testing;

namespace {

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct Shape {
  int M, N, K;
};

}  // namespace

TEST_CASE("linear: fprop dgrad and wgrad against the FP64 products", "[fp8]") {
  // Edge sizes (K = 1, K = 129, M = 1, N not a multiple of 128) and a moderate layer. The FP8
  // error of one GEMM is ~3.7% rel-L2 on N(0,1) data (see the block gemm accuracy test):
  // tolerance 5%. Outputs of fewer than 256 elements get 10%: rel-L2 over a few elements is a
  // noisy estimate (measured up to 4.4% over 64 elements; one product of two E4M3 roundings alone
  // can be off by ~2 x 2^-4).
  auto check = [](const char* what, const std::vector<float>& d, const std::vector<double>& ref) {
    const double e = rel_l2(d, ref);
    INFO(what << " rel-L2 " << e << " over " << d.size() << " elements");
    CHECK(e < (d.size() < 256 ? 0.10 : 0.05));
  };
  const Shape shapes[] = {{1, 1, 1}, {1, 64, 129}, {7, 1, 300}, {37, 96, 300}, {200, 130, 257}};
  for (const Shape& s : shapes) {
    for (bool pow2 : {false, true}) {
      for (bool bf16 : {false, true}) {
        const Fp8Options o{pow2, bf16};
        INFO("M " << s.M << " N " << s.N << " K " << s.K << " pow2 " << pow2 << " bf16 " << bf16);
        const std::vector<float> x = random_matrix(s.M, s.K, 71);
        const std::vector<float> W = random_matrix(s.N, s.K, 72);
        const std::vector<float> dy = random_matrix(s.M, s.N, 73);
        const std::vector<float> Wt = transposed(W, s.N, s.K);
        const std::vector<float> dyt = transposed(dy, s.M, s.N);
        const std::vector<float> xt = transposed(x, s.M, s.K);

        std::vector<float> y(idx(s.M) * s.N);
        linear_fprop(x.data(), W.data(), y.data(), s.M, s.N, s.K, o);
        check("fprop", y, gemm_nt_fp64(x.data(), W.data(), s.M, s.N, s.K));

        std::vector<float> dx(idx(s.M) * s.K);
        linear_dgrad(dy.data(), W.data(), dx.data(), s.M, s.N, s.K, o);
        check("dgrad", dx, gemm_nt_fp64(dy.data(), Wt.data(), s.M, s.K, s.N));

        std::vector<float> dW(idx(s.N) * s.K);
        linear_wgrad(dy.data(), x.data(), dW.data(), s.M, s.N, s.K, o);
        check("wgrad", dW, gemm_nt_fp64(dyt.data(), xt.data(), s.N, s.K, s.M));
      }
    }
  }
}

TEST_CASE("linear: each GEMM is the recipe's quantisation followed by the block GEMM", "[fp8]") {
  const int M = 37, N = 150, K = 260;
  const QuantOptions q{true};
  const Fp8Options o{true, false};
  const std::vector<float> x = random_matrix(M, K, 81, 0.01);
  const std::vector<float> W = random_matrix(N, K, 82, 0.01);
  const std::vector<float> dy = random_matrix(M, N, 83, 0.01);

  std::vector<float> got(idx(M) * N), want(got.size());
  linear_fprop(x.data(), W.data(), got.data(), M, N, K, o);
  gemm_vec128_blk128(quantize_rowwise(x.data(), M, K, q), quantize_blocks(W.data(), N, K, q),
                     want.data(), false);
  CHECK(bitwise_equal(got, want));

  // dgrad uses fprop's FP8 weights, transposed; equal to quantising Wᵀ in 128x128 blocks.
  got.assign(idx(M) * K, 0.0f);
  want.assign(got.size(), 0.0f);
  linear_dgrad(dy.data(), W.data(), got.data(), M, N, K, o);
  const std::vector<float> Wt = transposed(W, N, K);
  gemm_vec128_blk128(quantize_rowwise(dy.data(), M, N, q), quantize_blocks(Wt.data(), K, N, q),
                     want.data(), false);
  CHECK(bitwise_equal(got, want));

  // wgrad: dyᵀ and xᵀ quantised along M from the FP32 tensors.
  got.assign(idx(N) * K, 0.0f);
  want.assign(got.size(), 0.0f);
  linear_wgrad(dy.data(), x.data(), got.data(), M, N, K, o);
  gemm_vec128_vec128(quantize_columnwise(dy.data(), M, N, q), quantize_columnwise(x.data(), M, K, q),
                     want.data(), false);
  CHECK(bitwise_equal(got, want));
}

TEST_CASE("linear: exact on small integers with power-of-two scales", "[fp8]") {
  // Values in [-4, 4]: with pow2 scales every block's factor is 64, 128 or 256, so x * factor is
  // an E4M3 value (at most 3 significant bits), dequantisation undoes it exactly, and integer sums
  // are exact in FP32. All three GEMMs must then equal the integer products.
  const int M = 33, N = 20, K = 140;
  auto ints = [](int rows, int cols, int seed) {
    std::vector<float> m(idx(rows) * cols);
    for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<float>(static_cast<int>((i * 7 + seed) % 9) - 4);
    return m;
  };
  const std::vector<float> x = ints(M, K, 1), W = ints(N, K, 2), dy = ints(M, N, 3);
  const Fp8Options o{true, false};
  std::vector<float> y(idx(M) * N), dx(idx(M) * K),
      dW(idx(N) * K);
  linear_fprop(x.data(), W.data(), y.data(), M, N, K, o);
  linear_dgrad(dy.data(), W.data(), dx.data(), M, N, K, o);
  linear_wgrad(dy.data(), x.data(), dW.data(), M, N, K, o);
  const auto y64 = gemm_nt_fp64(x.data(), W.data(), M, N, K);
  const auto Wt = transposed(W, N, K);
  const auto dx64 = gemm_nt_fp64(dy.data(), Wt.data(), M, K, N);
  const auto dyt = transposed(dy, M, N), xt = transposed(x, M, K);
  const auto dW64 = gemm_nt_fp64(dyt.data(), xt.data(), N, K, M);
  for (size_t i = 0; i < y.size(); ++i) CHECK(y[i] == y64[i]);
  for (size_t i = 0; i < dx.size(); ++i) CHECK(dx[i] == dx64[i]);
  for (size_t i = 0; i < dW.size(); ++i) CHECK(dW[i] == dW64[i]);
}

TEST_CASE("linear: outputs are overwritten and sizes checked", "[fp8]") {
  const int M = 5, N = 6, K = 7;
  const std::vector<float> x = random_matrix(M, K, 91), W = random_matrix(N, K, 92),
                           dy = random_matrix(M, N, 93);
  std::vector<float> dW(idx(N) * K, std::numeric_limits<float>::quiet_NaN());
  linear_wgrad(dy.data(), x.data(), dW.data(), M, N, K);
  std::vector<float> again(dW.size(), 1e30f);
  linear_wgrad(dy.data(), x.data(), again.data(), M, N, K);
  for (float v : dW) CHECK(std::isfinite(v));
  CHECK(bitwise_equal(dW, again));
  std::vector<float> y(idx(M) * N);
  CHECK_THROWS_AS(linear_fprop(x.data(), W.data(), y.data(), 0, N, K), std::invalid_argument);
  CHECK_THROWS_AS(linear_dgrad(dy.data(), W.data(), y.data(), M, N, -1), std::invalid_argument);
}
