// Portable FP8 conversion: E4M3 and E5M2 (OCP "FP8 Formats for Deep Learning"), bit-exact with
// NVIDIA's `__nv_cvt_float_to_fp8` so the CPU reference and the CUDA backend quantise alike.
//
// Contract of encode_*(x, mode), for every float bit pattern x:
//   - rounding: round-to-nearest, ties to even, of the exact value of x (one rounding, no double
//     rounding through an intermediate format);
//   - NaN (any sign, any payload) -> 0x7F, without sign, in both formats (NVIDIA canonicalises NaN
//     inputs to a positive quiet NaN first);
//   - E4M3 (bias 7, no infinities, 0x7F/0xFF = NaN): max finite 448 (0x7E). |x| > 464 overflows;
//     464 itself is the tie between 448 and the (non-existent) 480 and rounds to even, i.e. 448.
//     Overflow (±Inf included): satfinite -> ±448 (0x7E/0xFE); nosat -> NaN with x's sign
//     (0x7F/0xFF);
//   - E5M2 (bias 15, IEEE-like: 0x7C = Inf, 0x7D-0x7F = NaN): max finite 57344 (0x7B).
//     |x| >= 61440 overflows (61440 is the tie between 57344 and 65536 = Inf, and 57344's mantissa
//     is odd). Overflow (±Inf included): satfinite -> ±57344 (0x7B/0xFB); nosat -> ±Inf (0x7C/0xFC);
//   - |x| <= half the smallest subnormal (2^-10 for E4M3, 2^-17 for E5M2) -> zero with x's sign
//     (the exact half is a tie with an odd code and rounds to zero); subnormals round correctly.
// decode_*(code) is exact for all 256 codes (every FP8 value is a float); NaN codes give a quiet
// NaN with the code's sign, E5M2's 0x7C/0xFC give ±Inf.
#pragma once

#include <cstdint>

namespace tandem::fp8 {

enum class Format { e4m3, e5m2 };

// satfinite: what the tensor cores' `cvt.rn.satfinite` does and what quantisation uses.
// nosat: NVIDIA's __NV_NOSAT (overflow becomes NaN in E4M3, Inf in E5M2).
enum class Saturation { satfinite, nosat };

inline constexpr float kE4M3Max = 448.0f;
inline constexpr float kE5M2Max = 57344.0f;

uint8_t encode_e4m3(float x, Saturation mode = Saturation::satfinite);
uint8_t encode_e5m2(float x, Saturation mode = Saturation::satfinite);
uint8_t encode(float x, Format format, Saturation mode = Saturation::satfinite);

float decode_e4m3(uint8_t code);
float decode_e5m2(uint8_t code);
float decode(uint8_t code, Format format);

}  // namespace tandem::fp8
