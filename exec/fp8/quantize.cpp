#include "exec/fp8/quantize.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/fp8/fp8.h"

namespace tandem::fp8 {
namespace {

void check_shape(int rows, int cols, const char* what) {
  if (rows < 0 || cols < 0) {
    throw std::invalid_argument(std::string(what) + ": negative shape " + std::to_string(rows) +
                                " x " + std::to_string(cols));
  }
}

// max |x| that also reports a NaN (std::max would silently drop it depending on the order).
struct Amax {
  float value = 0.0f;
  bool finite = true;
  void add(float x) {
    if (!std::isfinite(x)) finite = false;
    value = std::max(value, std::fabs(x));
  }
};

BlockScaling scaling_of(const Amax& a, const QuantOptions& opts) {
  return a.finite ? block_scaling(a.value, opts) : BlockScaling{};
}

}  // namespace

BlockScaling block_scaling(float amax, const QuantOptions& opts) {
  if (!(amax > 0.0f) || !std::isfinite(amax)) return {};  // zero block (or unusable amax): 1, 1
  float factor = kE4M3Max / amax;
  // amax below 448 / FLT_MAX (a subnormal block): keep the factor finite, as TE does.
  if (std::isinf(factor)) factor = std::numeric_limits<float>::max();
  if (opts.pow2_scales) {
    // Round down to a power of two by clearing the mantissa: factor is a normal float here
    // (>= 448 / FLT_MAX), so this is 2^floor(log2(factor)) and 1 / factor is exact.
    factor = std::bit_cast<float>(std::bit_cast<uint32_t>(factor) & 0x7F800000u);
    return {factor, 1.0f / factor};
  }
  return {factor, amax / kE4M3Max};
}

RowwiseFp8 quantize_rowwise(const float* x, int rows, int cols, const QuantOptions& opts) {
  check_shape(rows, cols, "quantize_rowwise");
  RowwiseFp8 q;
  q.rows = rows;
  q.cols = cols;
  q.data.resize(idx(rows) * cols);
  q.scales.resize(idx(q.k_blocks()) * rows);
  for (int r = 0; r < rows; ++r) {
    const float* row = x + idx(r) * cols;
    uint8_t* out = q.data.data() + idx(r) * cols;
    for (int kb = 0; kb < q.k_blocks(); ++kb) {
      const int k0 = kb * kBlock;
      const int k1 = std::min(cols, k0 + kBlock);
      Amax amax;
      for (int k = k0; k < k1; ++k) amax.add(row[k]);
      const BlockScaling s = scaling_of(amax, opts);
      for (int k = k0; k < k1; ++k) out[k] = encode_e4m3(row[k] * s.factor);
      q.scales[idx(kb) * rows + r] = s.scale;
    }
  }
  return q;
}

RowwiseFp8 quantize_columnwise(const float* x, int rows, int cols, const QuantOptions& opts) {
  check_shape(rows, cols, "quantize_columnwise");
  // Transposing the FP32 source is exact; quantising it rowwise then gives the 128x1 tiles of x.
  std::vector<float> xt(idx(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      xt[idx(c) * rows + r] = x[idx(r) * cols + c];
    }
  }
  return quantize_rowwise(xt.data(), cols, rows, opts);
}

BlockFp8 quantize_blocks(const float* w, int rows, int cols, const QuantOptions& opts) {
  check_shape(rows, cols, "quantize_blocks");
  BlockFp8 q;
  q.rows = rows;
  q.cols = cols;
  q.data.resize(idx(rows) * cols);
  q.scales.assign(idx(q.row_blocks()) * q.k_blocks_padded(), 0.0f);
  for (int rb = 0; rb < q.row_blocks(); ++rb) {
    const int r0 = rb * kBlock;
    const int r1 = std::min(rows, r0 + kBlock);
    for (int kb = 0; kb < q.k_blocks(); ++kb) {
      const int k0 = kb * kBlock;
      const int k1 = std::min(cols, k0 + kBlock);
      Amax amax;
      for (int r = r0; r < r1; ++r) {
        for (int k = k0; k < k1; ++k) amax.add(w[idx(r) * cols + k]);
      }
      const BlockScaling s = scaling_of(amax, opts);
      for (int r = r0; r < r1; ++r) {
        for (int k = k0; k < k1; ++k) {
          const size_t i = idx(r) * cols + k;
          q.data[i] = encode_e4m3(w[i] * s.factor);
        }
      }
      q.scales[idx(rb) * q.k_blocks_padded() + kb] = s.scale;
    }
  }
  return q;
}

BlockFp8 transpose(const BlockFp8& b) {
  BlockFp8 t;
  t.rows = b.cols;
  t.cols = b.rows;
  t.data.resize(b.data.size());
  for (int r = 0; r < b.rows; ++r) {
    for (int c = 0; c < b.cols; ++c) {
      t.data[idx(c) * b.rows + r] = b.data[idx(r) * b.cols + c];
    }
  }
  // b's block (rb, kb) is t's block (kb, rb); t's K blocks are b's row blocks.
  t.scales.assign(idx(t.row_blocks()) * t.k_blocks_padded(), 0.0f);
  for (int rb = 0; rb < b.row_blocks(); ++rb) {
    for (int kb = 0; kb < b.k_blocks(); ++kb) {
      t.scales[idx(kb) * t.k_blocks_padded() + rb] = b.scale(rb, kb);
    }
  }
  return t;
}

std::vector<float> dequantize(const RowwiseFp8& q) {
  std::vector<float> x(idx(q.rows) * q.cols);
  for (int r = 0; r < q.rows; ++r) {
    for (int c = 0; c < q.cols; ++c) {
      const size_t i = idx(r) * q.cols + c;
      x[i] = decode_e4m3(q.data[i]) * q.scale(r, c / kBlock);
    }
  }
  return x;
}

std::vector<float> dequantize(const BlockFp8& q) {
  std::vector<float> x(idx(q.rows) * q.cols);
  for (int r = 0; r < q.rows; ++r) {
    for (int c = 0; c < q.cols; ++c) {
      const size_t i = idx(r) * q.cols + c;
      x[i] = decode_e4m3(q.data[i]) * q.scale(r / kBlock, c / kBlock);
    }
  }
  return x;
}

}  // namespace tandem::fp8
