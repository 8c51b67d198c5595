// Blockwise E4M3 quantisation: the scale rules, the documented scale layouts, the error bound, the
// exact transpose of 128x128 blocks, columnwise copies.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "common/signed_index.h"
#include "exec/fp8/fp8.h"
#include "exec/fp8/quantize.h"
#include "test_matrices.h"

using tandem::idx;

using namespace tandem::fp8;
using tandem::fp8::testing::random_matrix;
using tandem::fp8::testing::transposed;

namespace {

bool is_pow2(float s) {
  int e = 0;
  return s > 0.0f && std::frexp(s, &e) == 0.5f;
}

// |x - deq(q(x))| <= 2^-4 |x| + 2^-10 scale, with slack for the FP32 roundings of x * factor, of
// the scale itself (amax / 448 vs 1 / factor) and of decode * scale: a few units of 2^-24.
void check_error_bound(const std::vector<float>& x, const std::vector<float>& deq,
                       const std::vector<float>& scale_per_element) {
  const double slack = 1.0 + 1e-6;
  long bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double err = std::fabs(static_cast<double>(x[i]) - deq[i]);
    const double bound = (0x1p-4 * std::fabs(x[i]) + 0x1p-10 * scale_per_element[i]) * slack;
    if (err > bound && bad++ < 5) {
      UNSCOPED_INFO("element " << i << ": x " << x[i] << " deq " << deq[i] << " scale "
                               << scale_per_element[i]);
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE("quantize: block scaling rules", "[fp8]") {
  const QuantOptions pow2{true};
  CHECK(block_scaling(0.0f).factor == 1.0f);  // zero block: scale 1
  CHECK(block_scaling(0.0f).scale == 1.0f);
  CHECK(block_scaling(0.0f, pow2).scale == 1.0f);
  CHECK(block_scaling(448.0f).factor == 1.0f);
  CHECK(block_scaling(448.0f).scale == 1.0f);
  CHECK(block_scaling(1.0f).factor == 448.0f);
  CHECK(block_scaling(1.0f).scale == 1.0f / 448.0f);
  CHECK(block_scaling(3.0f).scale == 3.0f / 448.0f);  // amax / 448, not 1 / factor
  // pow2: 448 / amax rounded down to a power of two, scale its exact inverse.
  CHECK(block_scaling(1.0f, pow2).factor == 256.0f);
  CHECK(block_scaling(1.0f, pow2).scale == 1.0f / 256.0f);
  CHECK(block_scaling(3.5f, pow2).factor == 128.0f);  // 448 / 3.5 = 128 exactly
  CHECK(block_scaling(3.6f, pow2).factor == 64.0f);   // 124.4 -> 64
  CHECK(block_scaling(1000.0f, pow2).factor == 0.25f);
  CHECK(block_scaling(1000.0f, pow2).scale == 4.0f);
  // 448 / amax overflows for a subnormal amax: the factor stays finite.
  const float tiny = std::numeric_limits<float>::denorm_min();
  CHECK(block_scaling(tiny).factor == std::numeric_limits<float>::max());
  CHECK(block_scaling(tiny, pow2).factor == 0x1p127f);
  CHECK(block_scaling(tiny, pow2).scale == 0x1p-127f);
  // Unusable amax: 1, 1.
  CHECK(block_scaling(std::numeric_limits<float>::infinity()).scale == 1.0f);
  CHECK(block_scaling(std::numeric_limits<float>::quiet_NaN()).scale == 1.0f);
}

TEST_CASE("quantize: VEC128 scales are M-major", "[fp8]") {
  // Each (row, K block) gets its own amax, placed at a different column of the block; the last
  // K block is partial (300 = 2 x 128 + 44).
  const int rows = 3, cols = 300;
  std::vector<float> x(idx(rows) * cols, 0.25f);
  auto amax_of = [](int r, int kb) { return static_cast<float>(10 * (r + 1) + kb + 1); };
  auto column_of = [&](int r, int kb) { return std::min(cols - 1, kb * kBlock + 7 * r + kb); };
  for (int r = 0; r < rows; ++r) {
    for (int kb = 0; kb < 3; ++kb) x[idx(r) * cols + column_of(r, kb)] = -amax_of(r, kb);
  }
  const RowwiseFp8 q = quantize_rowwise(x.data(), rows, cols);
  REQUIRE(q.k_blocks() == 3);
  REQUIRE(q.scales.size() == 9);
  REQUIRE(q.data.size() == idx(rows * cols));
  for (int r = 0; r < rows; ++r) {
    for (int kb = 0; kb < 3; ++kb) {
      INFO("r " << r << " kb " << kb);
      CHECK(q.scales[idx(kb) * rows + r] == amax_of(r, kb) / 448.0f);
      CHECK(q.scale(r, kb) == amax_of(r, kb) / 448.0f);
      CHECK(q.data[idx(r) * cols + column_of(r, kb)] == 0xFE);  // -448
    }
  }
}

TEST_CASE("quantize: BLK128x128 scales are K-major with L padded to 4", "[fp8]") {
  // 300 x 200: 3 row blocks (the last partial), 2 K blocks (the last partial), L4 = 4.
  const int rows = 300, cols = 200;
  std::vector<float> w(idx(rows) * cols, 0.5f);
  auto amax_of = [](int rb, int kb) { return static_cast<float>(100 * (rb + 1) + kb); };
  for (int rb = 0; rb < 3; ++rb) {
    for (int kb = 0; kb < 2; ++kb) {
      const int r = std::min(rows - 1, rb * kBlock + 50), c = std::min(cols - 1, kb * kBlock + 71);
      w[idx(r) * cols + c] = amax_of(rb, kb);
    }
  }
  const BlockFp8 q = quantize_blocks(w.data(), rows, cols);
  REQUIRE(q.row_blocks() == 3);
  REQUIRE(q.k_blocks() == 2);
  REQUIRE(q.k_blocks_padded() == 4);
  REQUIRE(q.scales.size() == 12);
  for (int rb = 0; rb < 3; ++rb) {
    for (int kb = 0; kb < 4; ++kb) {
      INFO("rb " << rb << " kb " << kb);
      const float want = kb < 2 ? amax_of(rb, kb) / 448.0f : 0.0f;  // padding is 0
      CHECK(q.scales[idx(rb) * 4 + kb] == want);
    }
  }
}

TEST_CASE("quantize: the amax element becomes ±448 and the error bound holds", "[fp8]") {
  const int rows = 37, cols = 300;  // partial K block at the end
  const std::vector<float> x = random_matrix(rows, cols, 11, 0.01);
  for (bool pow2 : {false, true}) {
    INFO("pow2 " << pow2);
    const RowwiseFp8 q = quantize_rowwise(x.data(), rows, cols, QuantOptions{pow2});
    std::vector<float> scale_of(x.size());
    for (int r = 0; r < rows; ++r) {
      for (int kb = 0; kb < q.k_blocks(); ++kb) {
        const int k0 = kb * kBlock, k1 = std::min(cols, k0 + kBlock);
        int arg = k0;
        for (int k = k0; k < k1; ++k) {
          scale_of[idx(r) * cols + k] = q.scale(r, kb);
          if (std::fabs(x[idx(r) * cols + k]) > std::fabs(x[idx(r) * cols + arg])) arg = k;
        }
        const float amax_dq = decode_e4m3(q.data[idx(r) * cols + arg]);
        if (pow2) {
          CHECK(is_pow2(q.scale(r, kb)));
          CHECK(std::fabs(amax_dq) >= 224.0f);  // factor > half of 448 / amax
        } else {
          CHECK(std::fabs(amax_dq) == 448.0f);
        }
        CHECK(std::signbit(amax_dq) == std::signbit(x[idx(r) * cols + arg]));
      }
    }
    check_error_bound(x, dequantize(q), scale_of);
  }
}

TEST_CASE("quantize: 128x128 blocks obey the error bound and pow2 scales", "[fp8]") {
  const int rows = 257, cols = 130;
  const std::vector<float> w = random_matrix(rows, cols, 12, 0.01);
  for (bool pow2 : {false, true}) {
    const BlockFp8 q = quantize_blocks(w.data(), rows, cols, QuantOptions{pow2});
    std::vector<float> scale_of(w.size());
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) scale_of[idx(r) * cols + c] = q.scale(r / kBlock, c / kBlock);
    }
    check_error_bound(w, dequantize(q), scale_of);
    for (int rb = 0; rb < q.row_blocks(); ++rb) {
      for (int kb = 0; kb < q.k_blocks(); ++kb) CHECK(is_pow2(q.scale(rb, kb)) == pow2);
    }
  }
}

TEST_CASE("quantize: zero blocks get scale 1 and stay zero", "[fp8]") {
  std::vector<float> x(2 * 200, 0.0f);
  for (int k = 128; k < 200; ++k) x[k] = 2.0f;  // row 0, K block 1 nonzero
  const RowwiseFp8 q = quantize_rowwise(x.data(), 2, 200);
  CHECK(q.scale(0, 0) == 1.0f);
  CHECK(q.scale(1, 0) == 1.0f);
  CHECK(q.scale(1, 1) == 1.0f);
  CHECK(q.scale(0, 1) == 2.0f / 448.0f);
  const std::vector<float> d = dequantize(q);
  CHECK(d == x);  // zeros stay zero; 2 = 448 * (2 / 448) exactly here
  const BlockFp8 b = quantize_blocks(x.data(), 2, 200);
  CHECK(b.scale(0, 0) == 1.0f);
  CHECK(std::all_of(b.data.begin(), b.data.begin() + 128, [](uint8_t c) { return c == 0; }));
}

TEST_CASE("quantize: transpose of 128x128 blocks is exact", "[fp8]") {
  const int shapes[][2] = {{1, 1}, {128, 128}, {300, 200}, {129, 257}, {5, 600}};
  for (const auto& s : shapes) {
    const int rows = s[0], cols = s[1];
    const std::vector<float> w = random_matrix(rows, cols, 13 + rows, 0.01);
    const std::vector<float> wt = transposed(w, rows, cols);
    for (bool pow2 : {false, true}) {
      INFO(rows << " x " << cols << " pow2 " << pow2);
      const BlockFp8 q = quantize_blocks(w.data(), rows, cols, QuantOptions{pow2});
      const BlockFp8 t = transpose(q);
      const BlockFp8 qt = quantize_blocks(wt.data(), cols, rows, QuantOptions{pow2});
      CHECK(t.rows == cols);
      CHECK(t.cols == rows);
      CHECK(t.data == qt.data);
      CHECK(t.scales == qt.scales);  // padding included
      const BlockFp8 back = transpose(t);
      CHECK(back.data == q.data);
      CHECK(back.scales == q.scales);
      CHECK(dequantize(t) == transposed(dequantize(q), rows, cols));
    }
  }
}

TEST_CASE("quantize: columnwise is the rowwise quantisation of the transpose", "[fp8]") {
  const int rows = 300, cols = 70;
  const std::vector<float> x = random_matrix(rows, cols, 14, 0.01);
  const std::vector<float> xt = transposed(x, rows, cols);
  const RowwiseFp8 c = quantize_columnwise(x.data(), rows, cols);
  const RowwiseFp8 r = quantize_rowwise(xt.data(), cols, rows);
  CHECK(c.rows == cols);
  CHECK(c.cols == rows);
  CHECK(c.data == r.data);
  CHECK(c.scales == r.scales);
  // Tiles run down x's columns: each 128-row tile of a column has its amax at ±448.
  for (int col = 0; col < cols; ++col) {
    for (int tb = 0; tb < c.k_blocks(); ++tb) {
      float amax = 0.0f;
      for (int row = tb * kBlock; row < std::min(rows, (tb + 1) * kBlock); ++row) {
        amax = std::max(amax, std::fabs(x[idx(row) * cols + col]));
      }
      CHECK(c.scale(col, tb) == amax / 448.0f);
    }
  }
  // And it is not the transpose of the rowwise-quantised x (a 1-D quantised tensor cannot be
  // transposed): the dequantised values differ somewhere.
  const RowwiseFp8 q_rows = quantize_rowwise(x.data(), rows, cols);
  CHECK(dequantize(c) != transposed(dequantize(q_rows), rows, cols));
}

TEST_CASE("quantize: negative shapes throw", "[fp8]") {
  const float x = 1.0f;
  CHECK_THROWS_AS(quantize_rowwise(&x, -1, 1), std::invalid_argument);
  CHECK_THROWS_AS(quantize_blocks(&x, 1, -1), std::invalid_argument);
}
