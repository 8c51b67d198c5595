#include "exec/fp8/fp8.h"

#include <bit>
#include <limits>

namespace tandem::fp8 {
namespace {

// What distinguishes the two formats for rounding. Everything else (RNE, subnormals, the order of
// the special cases) is shared, so one routine serves both.
struct Layout {
  int mantissa_bits;     // stored mantissa bits (3 for E4M3, 2 for E5M2)
  int bias;              // exponent bias (7, 15)
  int max_code;          // largest finite magnitude code (0x7E = 448, 0x7B = 57344)
  uint8_t nosat_overflow;  // magnitude code of an overflow without saturation (NaN 0x7F, Inf 0x7C)
  bool ieee_specials;      // E5M2: exponent all ones = Inf/NaN. E4M3: only S.1111.111 is NaN
};

constexpr Layout kE4M3{3, 7, 0x7E, 0x7F, false};
constexpr Layout kE5M2{2, 15, 0x7B, 0x7C, true};

uint8_t encode_with(float x, const Layout& f, Saturation mode) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 31) << 7);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return 0x7F;  // NaN: canonical, sign dropped (as NVIDIA's host path)

  const uint8_t overflow =
      static_cast<uint8_t>(sign | (mode == Saturation::satfinite ? f.max_code : f.nosat_overflow));
  if (a == 0x7F800000u) return overflow;  // ±Inf is an overflow like any other
  // Zero and float subnormals (< 2^-126) are far below half the smallest FP8 subnormal.
  if ((a >> 23) == 0) return sign;

  // |x| = sig * 2^(e - 23) with a 24-bit significand. The FP8 value grid around |x| has spacing
  // 2^(max(e, emin) - m): below emin (subnormals) the spacing stops shrinking. Rounding |x| to a
  // multiple q of that spacing is one integer RNE of sig shifted right by `shift`.
  const int e = static_cast<int>(a >> 23) - 127;
  const uint32_t sig = (a & 0x7FFFFFu) | 0x800000u;
  const int emin = 1 - f.bias;
  const int ebin = e > emin ? e : emin;
  const int shift = (23 - f.mantissa_bits) + (ebin - e);
  // From shift 25 on, sig < 2^24 <= half the spacing: rounds to zero (this also keeps the shifts
  // below 32 bits).
  if (shift >= 25) return sign;
  uint32_t q = sig >> shift;
  const uint32_t rest = sig & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (q & 1u))) ++q;

  // Code = (biased exponent of the binade - 1) * 2^m + q: q carries the implicit leading one, so a
  // rounding carry (q = 2^(m+1)) or a subnormal reaching the smallest normal (q = 2^m with
  // ebin = emin) lands on the right code without special cases.
  const int code = ((ebin + f.bias - 1) << f.mantissa_bits) + static_cast<int>(q);
  if (code > f.max_code) return overflow;
  return static_cast<uint8_t>(sign | code);
}

float decode_with(uint8_t code, const Layout& f) {
  const bool negative = (code & 0x80) != 0;
  const int mag = code & 0x7F;
  const int mant = mag & ((1 << f.mantissa_bits) - 1);
  const int exp_field = mag >> f.mantissa_bits;
  const int exp_all_ones = (1 << (7 - f.mantissa_bits)) - 1;

  if (f.ieee_specials ? exp_field == exp_all_ones : mag == 0x7F) {
    const float special = (f.ieee_specials && mant == 0) ? std::numeric_limits<float>::infinity()
                                                         : std::numeric_limits<float>::quiet_NaN();
    return negative ? -special : special;
  }
  // Build the float's bits directly: every FP8 value (normal or subnormal) is a normal float or 0.
  uint32_t bits = 0;
  if (exp_field != 0) {
    const uint32_t fexp = static_cast<uint32_t>(exp_field - f.bias + 127);
    bits = (fexp << 23) | (static_cast<uint32_t>(mant) << (23 - f.mantissa_bits));
  } else if (mant != 0) {
    // Subnormal: mant * 2^(emin - m). Normalise: the highest set bit of mant becomes the
    // implicit one.
    const int top = std::bit_width(static_cast<unsigned>(mant)) - 1;  // 0..m-1
    const int e = (1 - f.bias) - f.mantissa_bits + top;
    const uint32_t frac = static_cast<uint32_t>(mant) & ((1u << top) - 1u);
    bits = (static_cast<uint32_t>(e + 127) << 23) | (frac << (23 - top));
  }
  if (negative) bits |= 0x80000000u;
  return std::bit_cast<float>(bits);
}

}  // namespace

uint8_t encode_e4m3(float x, Saturation mode) { return encode_with(x, kE4M3, mode); }
uint8_t encode_e5m2(float x, Saturation mode) { return encode_with(x, kE5M2, mode); }
uint8_t encode(float x, Format format, Saturation mode) {
  return format == Format::e4m3 ? encode_e4m3(x, mode) : encode_e5m2(x, mode);
}

float decode_e4m3(uint8_t code) { return decode_with(code, kE4M3); }
float decode_e5m2(uint8_t code) { return decode_with(code, kE5M2); }
float decode(uint8_t code, Format format) {
  return format == Format::e4m3 ? decode_e4m3(code) : decode_e5m2(code);
}

}  // namespace tandem::fp8
