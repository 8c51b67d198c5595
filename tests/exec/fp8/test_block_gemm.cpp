// The reference block-scaled GEMMs: exact definition (vs FP64 on the quantised operands), accuracy
// against the unquantised product, the determinism contract, BF16 output, edges.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "common/signed_index.h"
#include "exec/fp8/bf16.h"
#include "exec/fp8/block_gemm.h"
#include "exec/fp8/fp8.h"
#include "exec/fp8/quantize.h"
#include "test_matrices.h"

using tandem::idx;

using namespace tandem::fp8;
using namespace tandem::fp8::testing;

namespace {

// FP64 evaluation of the GEMM's definition on the quantised operands: sum over K blocks of
// sa * sb * (sum of decoded products). Also returns, per element, sum |sa sb qa qb| (the scale of
// the rounding error of any FP32 summation order).
struct Fp64Result {
  std::vector<double> value;
  std::vector<double> magnitude;
};

template <class ScaleB>
Fp64Result definition_fp64(const RowwiseFp8& a, const std::vector<uint8_t>& b_data, int N,
                           ScaleB sb) {
  const int M = a.rows, K = a.cols;
  Fp64Result r{std::vector<double>(idx(M) * N),
               std::vector<double>(idx(M) * N)};
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double v = 0.0, mag = 0.0;
      for (int k = 0; k < K; ++k) {
        const double s = static_cast<double>(a.scale(m, k / kBlock)) * sb(n, k / kBlock);
        const double p = static_cast<double>(decode_e4m3(a.data[idx(m) * K + k])) *
                         decode_e4m3(b_data[idx(n) * K + k]) * s;
        v += p;
        mag += std::fabs(p);
      }
      r.value[idx(m) * N + n] = v;
      r.magnitude[idx(m) * N + n] = mag;
    }
  }
  return r;
}

// Every element within `rel` of the summed magnitudes: the FP32 roundings of 128-term partial
// sums and of the block accumulation, not an error in the definition.
void check_close(const std::vector<float>& d, const Fp64Result& ref, double rel) {
  long bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < d.size(); ++i) {
    const double err = std::fabs(d[i] - ref.value[i]);
    worst = std::max(worst, err / std::max(ref.magnitude[i], 1e-30));
    if (err > rel * ref.magnitude[i] + 1e-30) ++bad;
  }
  INFO("worst error / sum|terms| = " << worst);
  CHECK(bad == 0);
}

struct Shape {
  int M, N, K;
};
const Shape kShapes[] = {{1, 1, 1}, {3, 9, 1}, {5, 7, 129}, {37, 45, 300}, {64, 130, 256},
                         {1, 200, 513}};

}  // namespace

TEST_CASE("block gemm: VEC128 x BLK128x128 equals its definition (FP64 on the FP8 operands)",
          "[fp8]") {
  for (const Shape& s : kShapes) {
    INFO("M " << s.M << " N " << s.N << " K " << s.K);
    const std::vector<float> x = random_matrix(s.M, s.K, 21, 0.01);
    const std::vector<float> w = random_matrix(s.N, s.K, 22, 0.01);
    const RowwiseFp8 a = quantize_rowwise(x.data(), s.M, s.K);
    const BlockFp8 b = quantize_blocks(w.data(), s.N, s.K);
    std::vector<float> d(idx(s.M) * s.N);
    gemm_vec128_blk128(a, b, d.data(), false);
    const Fp64Result ref =
        definition_fp64(a, b.data, s.N, [&](int n, int kb) { return b.scale(n / kBlock, kb); });
    check_close(d, ref, 1e-6);
  }
}

TEST_CASE("block gemm: VEC128 x VEC128 equals its definition (FP64 on the FP8 operands)",
          "[fp8]") {
  for (const Shape& s : kShapes) {
    INFO("M " << s.M << " N " << s.N << " K " << s.K);
    const std::vector<float> x = random_matrix(s.M, s.K, 23, 0.01);
    const std::vector<float> y = random_matrix(s.N, s.K, 24, 0.01);
    const RowwiseFp8 a = quantize_rowwise(x.data(), s.M, s.K, QuantOptions{true});
    const RowwiseFp8 b = quantize_rowwise(y.data(), s.N, s.K, QuantOptions{true});
    std::vector<float> d(idx(s.M) * s.N);
    gemm_vec128_vec128(a, b, d.data(), false);
    const Fp64Result ref = definition_fp64(a, b.data, s.N, [&](int n, int kb) { return b.scale(n, kb); });
    check_close(d, ref, 1e-6);
  }
}

TEST_CASE("block gemm: accuracy against the unquantised FP64 product", "[fp8]") {
  // E4M3 keeps 3 mantissa bits: an operand's rounding error is uniform in ±half an ulp, about
  // 2.6% rms relative, so a product of two carries ~3.7% and so does a dot product of independent
  // N(0,1) rows (measured: 3.7% for both GEMMs). With 1% outliers (x30) the exact result is
  // dominated by outlier products, which sit at the top of their blocks' range and round
  // relatively finely: measured 3.0% (BLK) and 2.0% (VEC). Tolerance 5%.
  const int M = 96, N = 160, K = 512;
  for (double outliers : {0.0, 0.01}) {
    const std::vector<float> x = random_matrix(M, K, 31, outliers);
    const std::vector<float> w = random_matrix(N, K, 32, outliers);
    const std::vector<double> exact = gemm_nt_fp64(x.data(), w.data(), M, N, K);
    std::vector<float> d(idx(M) * N), d2(d.size());
    gemm_vec128_blk128(quantize_rowwise(x.data(), M, K), quantize_blocks(w.data(), N, K), d.data(), false);
    gemm_vec128_vec128(quantize_rowwise(x.data(), M, K), quantize_rowwise(w.data(), N, K), d2.data(), false);
    const double e_blk = rel_l2(d, exact), e_vec = rel_l2(d2, exact);
    INFO("outliers " << outliers << ": rel-L2 VEC128xBLK " << e_blk << ", VEC128xVEC128 " << e_vec);
    CHECK(e_blk > 0.005);  // it is FP8: an error this small would mean no quantisation happened
    CHECK(e_blk < 0.05);
    CHECK(e_vec < 0.05);
  }
}

TEST_CASE("block gemm: a row's output does not depend on M or N or the other rows", "[fp8]") {
  // The determinism contract: the same token computed in batches of 300, 37 and 1 (and, for the
  // 1-D x 1-D GEMM, against 1 or all rows of b) gives bit-identical outputs.
  const int Mbig = 300, N = 45, K = 300;
  const std::vector<float> x = random_matrix(Mbig, K, 41, 0.01);
  const std::vector<float> w = random_matrix(N, K, 42, 0.01);
  const RowwiseFp8 a_all = quantize_rowwise(x.data(), Mbig, K);
  const BlockFp8 b_blk = quantize_blocks(w.data(), N, K);
  const RowwiseFp8 b_vec = quantize_rowwise(w.data(), N, K);
  std::vector<float> d_blk(idx(Mbig) * N), d_vec(d_blk.size());
  gemm_vec128_blk128(a_all, b_blk, d_blk.data(), false);
  gemm_vec128_vec128(a_all, b_vec, d_vec.data(), false);

  auto rows_of = [&](int first, int count) {
    return quantize_rowwise(x.data() + idx(first) * K, count, K);
  };
  for (int first : {0, 100, 263}) {
    for (int count : {37, 1}) {
      INFO("rows " << first << " + " << count);
      const RowwiseFp8 a = rows_of(first, count);
      std::vector<float> got(idx(count) * N);
      gemm_vec128_blk128(a, b_blk, got.data(), false);
      CHECK(std::memcmp(got.data(), d_blk.data() + idx(first) * N,
                        got.size() * sizeof(float)) == 0);
      gemm_vec128_vec128(a, b_vec, got.data(), false);
      CHECK(std::memcmp(got.data(), d_vec.data() + idx(first) * N,
                        got.size() * sizeof(float)) == 0);
    }
  }
  // One row of b alone (VEC128 x VEC128: rows of b are independent too).
  for (int n : {0, 17, 44}) {
    const RowwiseFp8 b1 = quantize_rowwise(w.data() + idx(n) * K, 1, K);
    std::vector<float> col(Mbig);
    gemm_vec128_vec128(a_all, b1, col.data(), false);
    for (int m = 0; m < Mbig; ++m) {
      INFO("m " << m << " n " << n);
      REQUIRE(std::memcmp(&col[m], &d_vec[idx(m) * N + n], sizeof(float)) == 0);
    }
  }
}

TEST_CASE("block gemm: BF16 output is the FP32 output rounded once", "[fp8]") {
  const int M = 20, N = 33, K = 200;
  const std::vector<float> x = random_matrix(M, K, 51), w = random_matrix(N, K, 52);
  const RowwiseFp8 a = quantize_rowwise(x.data(), M, K);
  const BlockFp8 b = quantize_blocks(w.data(), N, K);
  std::vector<float> f32(idx(M) * N), b16(f32.size());
  gemm_vec128_blk128(a, b, f32.data(), false);
  gemm_vec128_blk128(a, b, b16.data(), true);
  int changed = 0;
  for (size_t i = 0; i < f32.size(); ++i) {
    CHECK(b16[i] == round_to_bf16(f32[i]));
    changed += b16[i] != f32[i];
  }
  CHECK(changed > 0);
}

TEST_CASE("block gemm: exact on values the format holds exactly", "[fp8]") {
  // Blocks whose amax is 448 get factor = scale = 1; small integers are E4M3 values and their
  // products and sums are exact in FP32, so the GEMM is the integer product.
  const int M = 3, N = 4, K = 130;
  std::vector<float> x(idx(M) * K), w(idx(N) * K);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(static_cast<int>(i % 5) - 2);
  for (int m = 0; m < M; ++m) {
    x[idx(m) * K] = 448.0f;
    x[idx(m) * K + 128] = 448.0f;
  }
  w[0] = 448.0f;
  w[128] = 448.0f;
  std::vector<float> d(idx(M) * N);
  gemm_vec128_blk128(quantize_rowwise(x.data(), M, K), quantize_blocks(w.data(), N, K), d.data(), false);
  const std::vector<double> exact = gemm_nt_fp64(x.data(), w.data(), M, N, K);
  for (size_t i = 0; i < d.size(); ++i) CHECK(d[i] == exact[i]);
}

TEST_CASE("block gemm: K mismatch throws and empty shapes work", "[fp8]") {
  const std::vector<float> x = random_matrix(2, 100, 61), w = random_matrix(3, 101, 62);
  std::vector<float> d(6);
  CHECK_THROWS_AS(gemm_vec128_blk128(quantize_rowwise(x.data(), 2, 100),
                                     quantize_blocks(w.data(), 3, 101), d.data(), false),
                  std::invalid_argument);
  CHECK_THROWS_AS(gemm_vec128_vec128(quantize_rowwise(x.data(), 2, 100),
                                     quantize_rowwise(w.data(), 3, 101), d.data(), false),
                  std::invalid_argument);
  gemm_vec128_vec128(quantize_rowwise(x.data(), 0, 100), quantize_rowwise(x.data(), 2, 100),
                     d.data(), false);  // M = 0: writes nothing
}
