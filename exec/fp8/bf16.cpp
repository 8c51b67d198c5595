#include "exec/fp8/bf16.h"

#include <bit>

namespace tandem::fp8 {

uint16_t float_to_bf16(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
    // Rounding would be meaningless and truncation could clear every payload bit left in the top
    // half (turning NaN into Inf): keep the top half and force the quiet bit.
    return static_cast<uint16_t>((u >> 16) | 0x0040u);
  }
  // RNE on the low 16 bits: add 0x7FFF plus the lowest kept bit, so an exact half rounds up only
  // when the kept part is odd. A carry out of the mantissa correctly bumps the exponent (up to Inf).
  const uint32_t lsb = (u >> 16) & 1u;
  return static_cast<uint16_t>((u + 0x7FFFu + lsb) >> 16);
}

float bf16_to_float(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

float round_to_bf16(float x) { return bf16_to_float(float_to_bf16(x)); }

}  // namespace tandem::fp8
