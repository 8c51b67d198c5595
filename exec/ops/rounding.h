// Small numeric helpers shared by the CPU ops (internal to exec/ops and its tests).
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "exec/fp8/bf16.h"
#include "exec/ops/tensor.h"

namespace tandem::nn {

// BF16 round-to-nearest-even of a float, returned as a float (exec/fp8/bf16.h's contract).
inline float bf16_round(float v) { return fp8::round_to_bf16(v); }

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
