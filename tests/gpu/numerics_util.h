// Small helpers of the GPU checks: the three numerics (exec/spec's Numerics, one type for both
// backends) by name, the test inputs, a float's bits, and whether a value is exactly a BF16 value
// (an output the recipe rounds).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/signed_index.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/ops/tensor.h"

namespace tandem::gputest {

inline const char* name(cuda::Numerics n) {
  switch (n) {
    case cuda::Numerics::exact: return "exact";
    case cuda::Numerics::bf16: return "bf16";
    case cuda::Numerics::fp8: return "fp8";
  }
  return "?";
}

inline constexpr cuda::Numerics kAllNumerics[] = {cuda::Numerics::exact, cuda::Numerics::bf16,
                                                        cuda::Numerics::fp8};

// Test input [rows, cols], N(0, 1) from `seed`, of a kind: 0 plain; 1 with 1% outliers (x300);
// 2 with edge values (zero tiles, float subnormals, near FLT_MAX, ±Inf, NaN, 464 — FP8 quantisation's
// corner cases).
inline std::vector<float> make_input(int rows, int cols, int kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> x(idx(rows) * cols);
  for (auto& v : x) v = n01(rng);
  const float inf = INFINITY;
  switch (kind) {
    case 1:  // 1% outliers
      for (std::size_t i = 0; i < x.size(); i += 97) x[i] *= 300.0f;
      break;
    case 2:  // edge values: zero tiles, subnormal tiles, huge, Inf, NaN, ties
      for (int r = 0; r < rows; ++r) {
        for (int c = 0; c < cols; ++c) {
          float& v = x[idx(r) * cols + c];
          if (c < 128 && r < 64) v = 0.0f;                                   // zero tiles
          else if (c >= 128 && c < 256) v *= 1e-40f;                        // float subnormals
          else if (c >= 256 && c < 384 && r % 2 == 0) v *= 3e38f / 4.0f;    // near FLT_MAX
        }
      }
      if (x.size() > 5000) {
        x[4000] = inf;
        x[4500] = -inf;
        x[4900] = NAN;
        x[1000] = 464.0f;
        x[1001] = -1e-30f;
      }
      break;
    default:
      break;
  }
  return x;
}

// A float's bits and back.
inline uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
inline float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

// The low 16 bits are zero: v is a BF16 value held in FP32.
inline bool is_bf16(float v) { return (std::bit_cast<uint32_t>(v) & 0xFFFFu) == 0; }

}  // namespace tandem::gputest
