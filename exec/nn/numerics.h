// Small numeric helpers shared by the ops of exec/nn (internal to the library and its tests).
#pragma once

#include <bit>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "exec/nn/tensor.h"

namespace tandem::nn {

// BF16 round-to-nearest-even of a float, returned as a float (NaN stays a quiet NaN, ±Inf stays).
inline float bf16_round(float v) {
  uint32_t u = std::bit_cast<uint32_t>(v);
  if ((u & 0x7f800000u) == 0x7f800000u) {  // Inf or NaN
    if (u & 0x007fffffu) u |= 0x00400000u;   // keep NaN quiet
    return std::bit_cast<float>(u & 0xffff0000u);
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::bit_cast<float>(u & 0xffff0000u);
}

// A copy of m with every element rounded to BF16.
inline Mat<float> bf16_rounded(const Mat<float>& m) { return m.unaryExpr(&bf16_round); }
inline void bf16_round_inplace(Mat<float>& m) { m = m.unaryExpr(&bf16_round); }

// bf16 / fp8 numerics are defined for T = float only.
template <class T>
void require_float_for(Numerics n, const char* op) {
  if constexpr (!std::is_same_v<T, float>) {
    if (n != Numerics::exact)
      throw std::invalid_argument(std::string(op) + ": bf16/fp8 numerics need T = float");
  }
}

}  // namespace tandem::nn
