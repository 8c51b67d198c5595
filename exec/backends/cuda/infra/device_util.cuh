// Small pieces every kernel file of the CUDA backend needs, in one place (CUDA sources only): the
// BF16 bit recipe, grid sizes, the launchers' argument check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>

namespace tandem::cuda::device {

// exec/fp8/bf16.cpp float_to_bf16, operation for operation: NaNs keep their payload and become
// quiet, everything else rounds to nearest even (overflow to Inf as the CPU does).
__device__ __forceinline__ uint16_t bf16_bits(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  const uint32_t lsb = (u >> 16) & 1u;
  return static_cast<uint16_t>((u + 0x7FFFu + lsb) >> 16);
}

// float_to_bf16 then bf16_to_float: x rounded to the nearest BF16 value, kept in FP32.
__device__ __forceinline__ float bf16_round(float x) {
  return __uint_as_float(static_cast<uint32_t>(bf16_bits(x)) << 16);
}

// Blocks for a grid-stride loop over n elements: enough to cover n once, at least 1, capped so
// huge n never exceeds the grid limit (the loops stride over the rest).
inline unsigned grid_for(std::size_t n, unsigned block) {
  const std::size_t g = (n + block - 1) / block;
  constexpr std::size_t kMaxBlocks = std::size_t{65535} * 16;
  return static_cast<unsigned>(g < kMaxBlocks ? (g > 0 ? g : 1) : kMaxBlocks);
}

// A launcher's argument check (host code): std::invalid_argument naming what is wrong.
inline void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace tandem::cuda::device
