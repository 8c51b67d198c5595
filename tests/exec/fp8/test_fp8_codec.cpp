// FP8 and BF16 conversions: decode tables, hand-picked encode edges, a strided sample of all float
// bit patterns against the independent reference (and NVIDIA's host code when available), round
// trips.
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

#include "exec/fp8/bf16.h"
#include "exec/fp8/fp8.h"
#include "fp8_reference.h"
#ifdef TANDEM_FP8_NVIDIA_REFERENCE
#include "nvidia_fp8.h"
#endif

using namespace tandem::fp8;

namespace {

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Same value and same sign of zero, or both NaN.
bool same_value(float a, double b) {
  if (std::isnan(b)) return std::isnan(a);
  return static_cast<double>(a) == b && std::signbit(a) == std::signbit(b);
}

}  // namespace

TEST_CASE("fp8: every E4M3 code decodes to its sign/exponent/mantissa value", "[fp8]") {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const double expect = reference::value_of(code, reference::kE4M3);
    INFO("code 0x" << std::hex << c);
    CHECK(same_value(decode_e4m3(code), expect));
    CHECK(same_value(decode(code, Format::e4m3), expect));
    if (std::isnan(decode_e4m3(code))) ++nans;
  }
  CHECK(nans == 2);  // only 0x7F and 0xFF; E4M3 has no infinities
  CHECK(std::isnan(decode_e4m3(0x7F)));
  CHECK(std::isnan(decode_e4m3(0xFF)));
  CHECK(std::signbit(decode_e4m3(0xFF)));
  // Anchors written out by hand.
  CHECK(decode_e4m3(0x7E) == 448.0f);
  CHECK(decode_e4m3(0xFE) == -448.0f);
  CHECK(decode_e4m3(0x38) == 1.0f);
  CHECK(decode_e4m3(0x08) == 0x1p-6f);  // smallest normal
  CHECK(decode_e4m3(0x07) == 7 * 0x1p-9f);
  CHECK(decode_e4m3(0x01) == 0x1p-9f);  // smallest subnormal
  CHECK(decode_e4m3(0x00) == 0.0f);
  CHECK(std::signbit(decode_e4m3(0x80)));
  CHECK(decode_e4m3(0x59) == 18.0f);
}

TEST_CASE("fp8: every E5M2 code decodes to its sign/exponent/mantissa value", "[fp8]") {
  int nans = 0;
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    const double expect = reference::value_of(code, reference::kE5M2);
    INFO("code 0x" << std::hex << c);
    CHECK(same_value(decode_e5m2(code), expect));
    CHECK(same_value(decode(code, Format::e5m2), expect));
    if (std::isnan(decode_e5m2(code))) ++nans;
  }
  CHECK(nans == 6);  // 0x7D-0x7F, 0xFD-0xFF
  CHECK(decode_e5m2(0x7C) == kInf);
  CHECK(decode_e5m2(0xFC) == -kInf);
  CHECK(decode_e5m2(0x7B) == 57344.0f);
  CHECK(decode_e5m2(0x3C) == 1.0f);
  CHECK(decode_e5m2(0x04) == 0x1p-14f);  // smallest normal
  CHECK(decode_e5m2(0x01) == 0x1p-16f);  // smallest subnormal
  CHECK(decode_e5m2(0x03) == 3 * 0x1p-16f);
}

#ifdef TANDEM_FP8_NVIDIA_REFERENCE
TEST_CASE("fp8: decode agrees with NVIDIA's cuda_fp8.h on all codes", "[fp8]") {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    INFO("code 0x" << std::hex << c);
    CHECK(same_value(decode_e4m3(code), nvidia::decode(code, false)));
    CHECK(same_value(decode_e5m2(code), nvidia::decode(code, true)));
  }
}
#endif

TEST_CASE("fp8: E4M3 encode at the edges", "[fp8]") {
  struct Case {
    float x;
    uint8_t satfinite;
    uint8_t nosat;
  };
  const float above_464 = std::nextafter(464.0f, kInf);
  const Case cases[] = {
      {448.0f, 0x7E, 0x7E},
      {-448.0f, 0xFE, 0xFE},
      {464.0f, 0x7E, 0x7E},      // tie 448 | 480: to even (448's mantissa 110)
      {above_464, 0x7E, 0x7F},   // just past the tie: overflow
      {480.0f, 0x7E, 0x7F},
      {-500.0f, 0xFE, 0xFF},     // NOSAT overflow keeps the sign
      {1e30f, 0x7E, 0x7F},
      {kInf, 0x7E, 0x7F},
      {-kInf, 0xFE, 0xFF},
      {kNaN, 0x7F, 0x7F},
      {-kNaN, 0x7F, 0x7F},       // NaN loses its sign
      {from_bits(0x7F800001u), 0x7F, 0x7F},  // signalling NaN
      {0.0f, 0x00, 0x00},
      {-0.0f, 0x80, 0x80},
      {1.0f, 0x38, 0x38},
      {1.0625f, 0x38, 0x38},     // tie 1 | 1.125: to even (1)
      {1.1875f, 0x3A, 0x3A},     // tie 1.125 | 1.25: to even (1.25)
      {17.0f, 0x58, 0x58},       // tie 16 | 18: to even (16)
      {19.0f, 0x5A, 0x5A},       // tie 18 | 20: to even (20)
      {416.0f, 0x7D, 0x7D},      // representable (spacing 32 in [256, 512))
      {400.0f, 0x7C, 0x7C},      // tie 384 | 416: to even (384)
      {432.0f, 0x7E, 0x7E},      // tie 416 | 448: to even (448)
      {0x1p-6f, 0x08, 0x08},     // smallest normal
      {0x1p-9f, 0x01, 0x01},     // smallest subnormal
      {0x1p-10f, 0x00, 0x00},    // half of it: tie 0 | 2^-9, to even (0)
      {-0x1p-10f, 0x80, 0x80},   // ... keeping the sign
      {std::nextafter(0x1p-10f, 1.0f), 0x01, 0x01},
      {0x1p-12f, 0x00, 0x00},
      {-0x1p-12f, 0x80, 0x80},   // tiny values flush to signed zero
      {from_bits(0x00000001u), 0x00, 0x00},  // float subnormal
      {from_bits(0x80000001u), 0x80, 0x80},
      {1.5f * 0x1p-9f, 0x02, 0x02},  // subnormal tie 1 | 2: to even (2)
      {2.5f * 0x1p-9f, 0x02, 0x02},  // subnormal tie 2 | 3: to even (2)
      {3.5f * 0x1p-9f, 0x04, 0x04},  // subnormal tie 3 | 4: to even (4)
      {7.5f * 0x1p-9f, 0x08, 0x08},  // tie largest subnormal | smallest normal: to even (normal)
      {7.25f * 0x1p-9f, 0x07, 0x07},
  };
  for (const Case& c : cases) {
    INFO("x = " << c.x << " (bits 0x" << std::hex << std::bit_cast<uint32_t>(c.x) << ")");
    CHECK(encode_e4m3(c.x, Saturation::satfinite) == c.satfinite);
    CHECK(encode_e4m3(c.x, Saturation::nosat) == c.nosat);
    CHECK(encode(c.x, Format::e4m3) == c.satfinite);
  }
}

TEST_CASE("fp8: E5M2 encode at the edges", "[fp8]") {
  struct Case {
    float x;
    uint8_t satfinite;
    uint8_t nosat;
  };
  const Case cases[] = {
      {57344.0f, 0x7B, 0x7B},
      {std::nextafter(61440.0f, 0.0f), 0x7B, 0x7B},
      {61440.0f, 0x7B, 0x7C},    // tie 57344 | 65536: to even = Inf
      {-61440.0f, 0xFB, 0xFC},
      {65536.0f, 0x7B, 0x7C},
      {kInf, 0x7B, 0x7C},
      {-kInf, 0xFB, 0xFC},
      {kNaN, 0x7F, 0x7F},
      {-kNaN, 0x7F, 0x7F},
      {0.0f, 0x00, 0x00},
      {-0.0f, 0x80, 0x80},
      {1.0f, 0x3C, 0x3C},
      {1.125f, 0x3C, 0x3C},      // tie 1 | 1.25: to even (1)
      {1.375f, 0x3E, 0x3E},      // tie 1.25 | 1.5: to even (1.5)
      {448.0f, 0x5F, 0x5F},
      {0x1p-14f, 0x04, 0x04},    // smallest normal
      {0x1p-16f, 0x01, 0x01},    // smallest subnormal
      {0x1p-17f, 0x00, 0x00},    // tie 0 | 2^-16: to even (0)
      {-0x1p-17f, 0x80, 0x80},
      {std::nextafter(0x1p-17f, 1.0f), 0x01, 0x01},
      {1.5f * 0x1p-16f, 0x02, 0x02},
      {3.5f * 0x1p-16f, 0x04, 0x04},  // tie largest subnormal | smallest normal
  };
  for (const Case& c : cases) {
    INFO("x = " << c.x << " (bits 0x" << std::hex << std::bit_cast<uint32_t>(c.x) << ")");
    CHECK(encode_e5m2(c.x, Saturation::satfinite) == c.satfinite);
    CHECK(encode_e5m2(c.x, Saturation::nosat) == c.nosat);
    CHECK(encode(c.x, Format::e5m2, Saturation::nosat) == c.nosat);
  }
}

TEST_CASE("fp8: a strided sample of all 2^32 floats matches the independent reference", "[fp8]") {
  // Every 4099th bit pattern (4099 is prime, so the sample walks through all exponents and
  // mantissa residues), plus the neighbourhoods of the format boundaries.
  std::vector<uint32_t> sample;
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4099) sample.push_back(static_cast<uint32_t>(u));
  for (float edge : {448.0f, 464.0f, 480.0f, 57344.0f, 61440.0f, 0x1p-6f, 0x1p-9f, 0x1p-10f,
                     0x1p-14f, 0x1p-16f, 0x1p-17f}) {
    const uint32_t b = std::bit_cast<uint32_t>(edge);
    for (uint32_t d = 0; d < 64; ++d) {
      for (uint32_t s : {0u, 0x80000000u}) {
        sample.push_back((b + d) | s);
        sample.push_back((b - d) | s);
      }
    }
  }
  long mismatches = 0, nvidia_mismatches = 0;
  for (uint32_t u : sample) {
    const float x = from_bits(u);
    for (bool sat : {true, false}) {
      const Saturation mode = sat ? Saturation::satfinite : Saturation::nosat;
      const uint8_t e4 = encode_e4m3(x, mode);
      const uint8_t e5 = encode_e5m2(x, mode);
      if (e4 != reference::encode(x, reference::kE4M3, sat) ||
          e5 != reference::encode(x, reference::kE5M2, sat)) {
        if (mismatches++ < 5) UNSCOPED_INFO("mismatch at bits 0x" << std::hex << u);
      }
#ifdef TANDEM_FP8_NVIDIA_REFERENCE
      if (e4 != nvidia::encode(x, false, sat) || e5 != nvidia::encode(x, true, sat)) {
        if (nvidia_mismatches++ < 5) UNSCOPED_INFO("NVIDIA mismatch at bits 0x" << std::hex << u);
      }
#endif
    }
  }
  CHECK(sample.size() > 1000000);
  CHECK(mismatches == 0);
  CHECK(nvidia_mismatches == 0);
}

TEST_CASE("fp8: encode after decode is the identity on every finite code", "[fp8]") {
  for (int c = 0; c < 256; ++c) {
    const uint8_t code = static_cast<uint8_t>(c);
    INFO("code 0x" << std::hex << c);
    if (const float v = decode_e4m3(code); std::isfinite(v)) {
      CHECK(encode_e4m3(v, Saturation::satfinite) == code);
      CHECK(encode_e4m3(v, Saturation::nosat) == code);
    }
    if (const float v = decode_e5m2(code); std::isfinite(v)) {
      CHECK(encode_e5m2(v, Saturation::satfinite) == code);
      CHECK(encode_e5m2(v, Saturation::nosat) == code);
    }
  }
  // Infinity is not finite but survives NOSAT in E5M2.
  CHECK(encode_e5m2(decode_e5m2(0x7C), Saturation::nosat) == 0x7C);
  CHECK(encode_e5m2(decode_e5m2(0xFC), Saturation::nosat) == 0xFC);
}

TEST_CASE("bf16: round to nearest even and keep the specials", "[fp8]") {
  CHECK(float_to_bf16(1.0f) == 0x3F80);
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);  // tie 1 | 1+2^-7: to even (1)
  CHECK(float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);  // tie 1+2^-7 | 1+2^-6: to even
  CHECK(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);
  CHECK(float_to_bf16(-1.0f - 0x1p-8f - 0x1p-20f) == 0xBF81);
  CHECK(float_to_bf16(-0.0f) == 0x8000);
  CHECK(float_to_bf16(kInf) == 0x7F80);
  CHECK(float_to_bf16(-kInf) == 0xFF80);
  CHECK(float_to_bf16(bf16_to_float(0x7F7F)) == 0x7F7F);  // largest BF16 stays
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);  // rounds up to Inf
  CHECK(float_to_bf16(from_bits(0x00010000u)) == 0x0001);  // BF16 subnormal kept
  CHECK(float_to_bf16(from_bits(0x00000001u)) == 0x0000);
  // NaN stays NaN, even a payload living only in the low 16 bits; the sign is kept.
  CHECK(std::isnan(bf16_to_float(float_to_bf16(from_bits(0x7F800001u)))));
  CHECK(std::isnan(bf16_to_float(float_to_bf16(from_bits(0xFF800001u)))));
  CHECK(std::signbit(bf16_to_float(float_to_bf16(from_bits(0xFF800001u)))));
  CHECK(std::isnan(round_to_bf16(kNaN)));
  CHECK(round_to_bf16(3.0f) == 3.0f);
  CHECK(bf16_to_float(0x4049) == 3.140625f);

  // Strided sample against the double-arithmetic reference.
  long mismatches = 0;
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 4099) {
    const float x = from_bits(static_cast<uint32_t>(u));
    const float got = round_to_bf16(x);
    const float want = reference::round_bf16(x);
    const bool same = std::isnan(want) ? std::isnan(got)
                                       : std::bit_cast<uint32_t>(got) == std::bit_cast<uint32_t>(want);
    if (!same && mismatches++ < 5) UNSCOPED_INFO("bf16 mismatch at bits 0x" << std::hex << u);
  }
  CHECK(mismatches == 0);
}
