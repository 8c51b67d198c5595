// Independent reference conversions for the FP8/BF16 tests. Written from the format definitions,
// sharing nothing with exec/fp8: values come from sign/exponent/mantissa through std::ldexp, and
// rounding is done in double arithmetic with std::nearbyint (round-half-even in the default
// rounding mode) followed by a search in the sorted table of the format's values. Slower than the
// library's integer code, which is the point: a different route to the same answer.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace tandem::fp8::reference {

struct Spec {
  int mantissa_bits;
  int bias;
  bool ieee_specials;  // E5M2: exponent field all ones = Inf/NaN; E4M3: only S.1111.111 is NaN
};
inline constexpr Spec kE4M3{3, 7, false};
inline constexpr Spec kE5M2{2, 15, true};

// The value of a code straight from the format definition.
inline double value_of(uint8_t code, const Spec& s) {
  const int m_bits = s.mantissa_bits;
  const int e_bits = 7 - m_bits;
  const double sign = (code & 0x80) ? -1.0 : 1.0;
  const int e = (code >> m_bits) & ((1 << e_bits) - 1);
  const int m = code & ((1 << m_bits) - 1);
  if (s.ieee_specials && e == (1 << e_bits) - 1) {
    return m == 0 ? sign * std::numeric_limits<double>::infinity()
                  : std::numeric_limits<double>::quiet_NaN();
  }
  if (!s.ieee_specials && (code & 0x7F) == 0x7F) return std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<double>(m), 1 - s.bias - m_bits);
  return sign * std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -m_bits), e - s.bias);
}

// Positive finite values in code order (which is value order): codes 0 .. count - 1.
struct Table {
  std::array<double, 128> v{};
  int count = 0;
  double max_finite = 0.0;
};
inline Table make_table(const Spec& s) {
  Table t;
  for (int c = 0; c < 128; ++c) {
    const double v = value_of(static_cast<uint8_t>(c), s);
    if (!std::isfinite(v)) break;
    t.v[t.count++] = v;
  }
  t.max_finite = t.v[t.count - 1];
  return t;
}
inline const Table& table_of(const Spec& s) {
  static const Table e4m3 = make_table(kE4M3);
  static const Table e5m2 = make_table(kE5M2);
  return s.ieee_specials ? e5m2 : e4m3;
}

// __nv_cvt_float_to_fp8 semantics, see exec/fp8/fp8.h for the rules this re-derives.
inline uint8_t encode(float x, const Spec& s, bool satfinite) {
  if (std::isnan(x)) return 0x7F;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const Table& t = table_of(s);
  const uint8_t overflow = static_cast<uint8_t>(
      sign | (satfinite ? t.count - 1 : (s.ieee_specials ? 0x7C : 0x7F)));
  const double a = std::fabs(static_cast<double>(x));
  if (std::isinf(a)) return overflow;
  if (a == 0.0) return sign;
  // Spacing of the FP8 grid at a: 2^(max(e, emin) - m), e = floor(log2 a). a / spacing is exact
  // (a power-of-two division of a float, far from double's limits), and so is the product back.
  const int emin = 1 - s.bias;
  const int e = std::max(std::ilogb(a), emin);
  const double spacing = std::ldexp(1.0, e - s.mantissa_bits);
  const double r = std::nearbyint(a / spacing) * spacing;
  // Beyond the largest finite value (E4M3: 480 = the value 0x7F would have; E5M2: 65536 = Inf).
  if (r > t.max_finite) return overflow;
  const double* it = std::lower_bound(t.v.data(), t.v.data() + t.count, r);
  return static_cast<uint8_t>(sign | (it - t.v.data()));
}

// BF16 round-to-nearest-even through double: the two BF16 neighbours of x by truncation and
// increment, the nearer one in double, the even one on a tie. NaN -> some NaN.
inline float round_bf16(float x) {
  if (std::isnan(x)) return x;
  if (std::isinf(x)) return x;
  uint32_t u = 0;
  std::memcpy(&u, &x, 4);
  const uint32_t lo_bits = u & 0xFFFF0000u;
  const uint32_t hi_bits = lo_bits + 0x10000u;  // the next BF16 away from zero (may be Inf)
  float lo = 0.0f, hi = 0.0f;
  std::memcpy(&lo, &lo_bits, 4);
  std::memcpy(&hi, &hi_bits, 4);
  const double dlo = std::fabs(static_cast<double>(x) - lo);
  double dhi = 0.0;
  if (std::isinf(hi)) {
    // The distance to "Inf" is the distance to where the next value would be: 2^128.
    dhi = std::ldexp(1.0, 128) - std::fabs(static_cast<double>(x));
  } else {
    dhi = std::fabs(static_cast<double>(x) - hi);
  }
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return ((lo_bits >> 16) & 1u) ? hi : lo;
}

}  // namespace tandem::fp8::reference
