#include "exec/fp8/block_gemm.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/signed_index.h"
#include "exec/fp8/bf16.h"
#include "exec/fp8/fp8.h"

namespace tandem::fp8 {
namespace {

// Register tile of the micro-kernel: MR rows of a times NR rows of b. 4 x 8 partial sums fit the
// 16 SSE registers of baseline x86-64 with room for the operands.
constexpr int MR = 4;
constexpr int NR = 8;

const std::array<float, 256>& e4m3_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = decode_e4m3(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

// One operand decoded to FP32 and packed into panels of `width` rows, each panel laid out
// [k][row in panel], so the micro-kernel reads both operands as contiguous streams. Rows past the
// end are zeros (their results are discarded). scales[kb * rows_padded + r] (0 past the end).
struct Panels {
  int rows_padded = 0;
  std::vector<float> values;  // (rows_padded / width) x K x width
  std::vector<float> scales;  // L x rows_padded
};

template <class ScaleOf>
Panels pack(const std::vector<uint8_t>& data, int rows, int K, int width, ScaleOf scale_of) {
  const auto& table = e4m3_values();
  Panels p;
  p.rows_padded = (rows + width - 1) / width * width;
  p.values.assign(idx(p.rows_padded) * K, 0.0f);
  for (int r = 0; r < rows; ++r) {
    float* panel = p.values.data() + idx(r / width) * K * width;
    const uint8_t* row = data.data() + idx(r) * K;
    for (int k = 0; k < K; ++k) panel[idx(k) * width + r % width] = table[row[k]];
  }
  const int L = (K + kBlock - 1) / kBlock;
  p.scales.assign(idx(L) * p.rows_padded, 0.0f);
  for (int kb = 0; kb < L; ++kb) {
    for (int r = 0; r < rows; ++r) p.scales[idx(kb) * p.rows_padded + r] = scale_of(r, kb);
  }
  return p;
}

// out[i][j] = d for rows m0 + i of a and n0 + j of b, exactly as block_gemm.h defines it: the k
// loop is sequential for every (i, j); the tile only decides which sums advance together.
void micro_kernel(const float* ap, const float* bp, const float* sa, size_t sa_stride,
                  const float* sb, size_t sb_stride, int K, float (&out)[MR][NR]) {
  float acc[MR][NR] = {};
  const int L = (K + kBlock - 1) / kBlock;
  for (int kb = 0; kb < L; ++kb) {
    const int k0 = kb * kBlock;
    const int k1 = std::min(K, k0 + kBlock);
    float p[MR][NR] = {};
    for (int k = k0; k < k1; ++k) {
      const float* av = ap + idx(k) * MR;
      const float* bv = bp + idx(k) * NR;
      for (int i = 0; i < MR; ++i) {
        for (int j = 0; j < NR; ++j) p[i][j] += av[i] * bv[j];
      }
    }
    const float* sak = sa + idx(kb) * sa_stride;
    const float* sbk = sb + idx(kb) * sb_stride;
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j] += (sak[i] * sbk[j]) * p[i][j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) out[i][j] = acc[i][j];
  }
}

void gemm_packed(const Panels& a, int M, const Panels& b, int N, int K, float* d, bool bf16_output) {
  // Columns of b per sweep over a: keep that slice of packed b (K x nc floats) within ~256 KiB of
  // cache while every panel of a passes over it. Changes speed only, not results.
  const int nc = std::max(NR, (65536 / std::max(K, 1)) / NR * NR);
  float out[MR][NR];
  for (int n_begin = 0; n_begin < b.rows_padded; n_begin += nc) {
    const int n_end = std::min(b.rows_padded, n_begin + nc);
    for (int m0 = 0; m0 < a.rows_padded; m0 += MR) {
      const float* ap = a.values.data() + idx(m0) * K;
      for (int n0 = n_begin; n0 < n_end; n0 += NR) {
        const float* bp = b.values.data() + idx(n0) * K;
        micro_kernel(ap, bp, a.scales.data() + m0, idx(a.rows_padded),
                     b.scales.data() + n0, idx(b.rows_padded), K, out);
        for (int i = 0; i < MR && m0 + i < M; ++i) {
          float* drow = d + idx(m0 + i) * N;
          for (int j = 0; j < NR && n0 + j < N; ++j) {
            drow[n0 + j] = bf16_output ? round_to_bf16(out[i][j]) : out[i][j];
          }
        }
      }
    }
  }
}

void check_operands(const char* what, int a_cols, int b_cols) {
  if (a_cols != b_cols) {
    throw std::invalid_argument(std::string(what) + ": K mismatch (a has " +
                                std::to_string(a_cols) + " columns, b has " +
                                std::to_string(b_cols) + ")");
  }
}

}  // namespace

void gemm_vec128_blk128(const RowwiseFp8& a, const BlockFp8& b, float* d, bool bf16_output) {
  check_operands("gemm_vec128_blk128", a.cols, b.cols);
  const int K = a.cols;
  const Panels pa = pack(a.data, a.rows, K, MR, [&](int r, int kb) { return a.scale(r, kb); });
  const Panels pb =
      pack(b.data, b.rows, K, NR, [&](int r, int kb) { return b.scale(r / kBlock, kb); });
  gemm_packed(pa, a.rows, pb, b.rows, K, d, bf16_output);
}

void gemm_vec128_vec128(const RowwiseFp8& a, const RowwiseFp8& b, float* d, bool bf16_output) {
  check_operands("gemm_vec128_vec128", a.cols, b.cols);
  const int K = a.cols;
  const Panels pa = pack(a.data, a.rows, K, MR, [&](int r, int kb) { return a.scale(r, kb); });
  const Panels pb = pack(b.data, b.rows, K, NR, [&](int r, int kb) { return b.scale(r, kb); });
  gemm_packed(pa, a.rows, pb, b.rows, K, d, bf16_output);
}

}  // namespace tandem::fp8
