// The GPU checks' view of the three numerics: the device's Numerics, its CPU twin, a
// name to print, and whether a value is exactly a BF16 value (an output the recipe rounds).
#pragma once

#include <bit>
#include <cstdint>

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

inline nn::Numerics to_nn(cuda::Numerics n) {
  switch (n) {
    case cuda::Numerics::exact: return nn::Numerics::exact;
    case cuda::Numerics::bf16: return nn::Numerics::bf16;
    case cuda::Numerics::fp8: return nn::Numerics::fp8;
  }
  return nn::Numerics::exact;
}

inline constexpr cuda::Numerics kAllNumerics[] = {cuda::Numerics::exact, cuda::Numerics::bf16,
                                                        cuda::Numerics::fp8};

// A float's bits and back.
inline uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
inline float from_bits(uint32_t u) { return std::bit_cast<float>(u); }

// The low 16 bits are zero: v is a BF16 value held in FP32.
inline bool is_bf16(float v) { return (std::bit_cast<uint32_t>(v) & 0xFFFFu) == 0; }

}  // namespace tandem::gputest
