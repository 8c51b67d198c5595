// BF16 (1-8-7, the top half of a float): what cuBLASLt writes when a GEMM's D type is BF16, and
// what DeepSeek keeps some activations and optimizer moments in. The CPU reference rounds through
// it to mimic those stores.
//
// Contract: float_to_bf16 rounds to nearest, ties to even (the CUDA intrinsic __float2bfloat16_rn);
// finite values past the largest BF16 round to ±Inf as IEEE rounding says; ±Inf stay ±Inf; NaN
// stays NaN (sign and top payload bits kept, quiet bit set, so a signalling payload can never
// truncate to Inf). bf16_to_float is exact.
#pragma once

#include <cstdint>

namespace tandem::fp8 {

uint16_t float_to_bf16(float x);
float bf16_to_float(uint16_t b);
// bf16_to_float(float_to_bf16(x)): x rounded to the nearest BF16 value, kept as a float.
float round_to_bf16(float x);

}  // namespace tandem::fp8
