// DeepSeek-V3's fine-grained FP8 quantisation (= Transformer Engine's Float8BlockScaling), E4M3,
// stored in cuBLASLt's GEMM-ready scale layouts so the CPU reference and the CUDA backend share
// one in-memory format (executor-notes §1.2, §6.1).
//
// Per block of elements (1x128 along a row, or 128x128):
//   amax   = max |x| over the block's elements;
//   factor = the quantisation multiplier, 448 / amax in FP32 (clamped to FLT_MAX when that
//            overflows, as TE does); with pow2_scales, 448 / amax rounded DOWN to a power of two
//            (TE's default: then scale * factor == 1 exactly and scaling never rounds);
//   scale  = the DEQUANTISATION multiplier, what the GEMMs consume: amax / 448 in FP32
//            (DeepGEMM's convention), or 1 / factor (exact) with pow2_scales;
//   code   = encode_e4m3(x * factor, satfinite), the product rounded once to FP32 first.
//   A block of zeros (amax == 0) gets factor = scale = 1, so it stays zero and no division by zero
//   happens. Non-finite inputs are not supported training data; a block with Inf/NaN also gets
//   factor = scale = 1 (Inf saturates to ±448, NaN stays NaN) instead of poisoning the block.
// Consequences (tested): the amax element becomes ±448 exactly (non-pow2 mode); and
//   |x - dequantised x| <= 2^-4 |x| + 2^-10 scale (plus FP32 rounding of the multiplies): E4M3
//   keeps 3 mantissa bits (half an ulp is <= 2^-4 of a normal value) and subnormals are spaced
//   2^-9, in units of the scaled value x * factor <= 448.
//
// Edge blocks: sizes need not be multiples of 128. A partial block is quantised from the elements
// that exist (as if padded with zeros, which cannot change amax); the padding is not stored.
// `data` holds exactly rows x cols codes; only the 2-D scale layout has padding entries (see
// BlockFp8).
//
// Bit-exactness with a GPU quantiser requires IEEE division (no --use_fast_math) for the non-pow2
// factor; pow2 scales avoid the issue.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/signed_index.h"

namespace tandem::fp8 {

inline constexpr int kBlock = 128;  // DeepSeek's block edge (1x128 tiles, 128x128 blocks)

struct QuantOptions {
  bool pow2_scales = false;  // factor rounded down to a power of two (TE's default)
};

struct BlockScaling {
  float factor = 1.0f;  // multiply x by this before encoding
  float scale = 1.0f;   // multiply a decoded code by this to dequantise
};
// The factor/scale pair for a block with the given amax (the rules above).
BlockScaling block_scaling(float amax, const QuantOptions& opts = {});

// 1x128 tiles along each row, in cuBLASLt's VEC128 layout: L = ceil(cols / 128) scales per row,
// stored M-major (all rows of K block 0, then of K block 1, ...): scales[kb * rows + r]. That is
// the layout of cuBLASLt's VEC128 A/B scales and DeepGEMM's "MN-major" LHS scales, which have no
// leading-dimension parameter, hence no padding.
struct RowwiseFp8 {
  int rows = 0;
  int cols = 0;
  std::vector<uint8_t> data;  // E4M3 codes, row-major rows x cols
  std::vector<float> scales;  // k_blocks() * rows, M-major

  int k_blocks() const { return (cols + kBlock - 1) / kBlock; }
  float scale(int r, int kb) const { return scales[idx(kb) * rows + r]; }
};

// 128x128 blocks, in cuBLASLt's BLK128x128 layout: K-major with the K-block count padded to a
// multiple of 4 (cuBLASLt requires the column stride of the scale matrix to be a multiple of 4):
// L4 = roundup(ceil(cols / 128), 4), scales[rb * L4 + kb] for row block rb < ceil(rows / 128).
// Padding entries (kb >= k_blocks()) are 0 and never read.
struct BlockFp8 {
  int rows = 0;
  int cols = 0;
  std::vector<uint8_t> data;  // E4M3 codes, row-major rows x cols
  std::vector<float> scales;  // row_blocks() * k_blocks_padded(), K-major

  int row_blocks() const { return (rows + kBlock - 1) / kBlock; }
  int k_blocks() const { return (cols + kBlock - 1) / kBlock; }
  int k_blocks_padded() const { return (k_blocks() + 3) / 4 * 4; }
  float scale(int rb, int kb) const {
    return scales[idx(rb) * k_blocks_padded() + kb];
  }
};

// x: row-major rows x cols. Activations and gradients (1x128 along the contiguous dimension).
RowwiseFp8 quantize_rowwise(const float* x, int rows, int cols, const QuantOptions& opts = {});
// The rowwise quantisation of xᵀ (result rows = cols, cols = rows): 1x128 tiles running down x's
// columns, for wgrad. Quantised from the high-precision x, not from a rowwise-quantised copy (a
// 1-D-quantised tensor cannot be transposed: its tiles run the wrong way).
RowwiseFp8 quantize_columnwise(const float* x, int rows, int cols, const QuantOptions& opts = {});
// w: row-major rows x cols. Weights (128x128 blocks).
BlockFp8 quantize_blocks(const float* w, int rows, int cols, const QuantOptions& opts = {});
// The exact transpose (data and scales): a 128x128 block is the same set of elements either way,
// so transpose(quantize_blocks(w)) == quantize_blocks(wᵀ), bit for bit. For dgrad's Wᵀ.
BlockFp8 transpose(const BlockFp8& b);

// decode(code) * scale for every element, row-major rows x cols.
std::vector<float> dequantize(const RowwiseFp8& q);
std::vector<float> dequantize(const BlockFp8& q);

}  // namespace tandem::fp8
