// Exhaustive checks of the conversions over all 2^32 float bit patterns. Hidden (tag
// [.exhaustive]): minutes on a 2-core machine, so not part of the [fp8] run. Run them with
//   build/tests/exec/fp8/tandem_fp8_tests "[exhaustive]"
// or configure with -DTANDEM_EXHAUSTIVE_TESTS=ON and run `ctest -L fp8_exhaustive`.
// The sweep is split over std::thread::hardware_concurrency() threads; each thread counts its
// mismatches and remembers the first, and the assertions run on the main thread (Catch2's are not
// thread-safe).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
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

struct Tally {
  uint64_t mismatches = 0;
  uint32_t first = 0;
};

// Calls differs(bits) for every 32-bit pattern; returns the total count and the smallest pattern
// that differed.
Tally sweep(const std::function<bool(uint32_t)>& differs) {
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<Tally> tallies(threads);
  std::vector<std::thread> pool;
  const uint64_t total = 1ull << 32;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const uint64_t begin = total * t / threads, end = total * (t + 1) / threads;
      for (uint64_t u = begin; u < end; ++u) {
        if (differs(static_cast<uint32_t>(u)) && tallies[t].mismatches++ == 0) {
          tallies[t].first = static_cast<uint32_t>(u);
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  Tally all;
  for (const Tally& t : tallies) {
    if (t.mismatches && !all.mismatches) all.first = t.first;
    all.mismatches += t.mismatches;
  }
  return all;
}

}  // namespace

#ifdef TANDEM_FP8_NVIDIA_REFERENCE
TEST_CASE("fp8 exhaustive: all 2^32 floats encode as NVIDIA's cuda_fp8.h host code does",
          "[.exhaustive]") {
  for (bool e5m2 : {false, true}) {
    for (bool sat : {true, false}) {
      const Saturation mode = sat ? Saturation::satfinite : Saturation::nosat;
      const Tally t = sweep([&](uint32_t u) {
        const float x = std::bit_cast<float>(u);
        const uint8_t ours = e5m2 ? encode_e5m2(x, mode) : encode_e4m3(x, mode);
        return ours != nvidia::encode(x, e5m2, sat);
      });
      INFO((e5m2 ? "E5M2" : "E4M3") << (sat ? " satfinite" : " nosat") << ": first mismatch 0x"
                                    << std::hex << t.first);
      CHECK(t.mismatches == 0);
    }
  }
}
#endif

TEST_CASE("fp8 exhaustive: all 2^32 floats encode as the exact-double reference does",
          "[.exhaustive]") {
  for (bool e5m2 : {false, true}) {
    for (bool sat : {true, false}) {
      const Saturation mode = sat ? Saturation::satfinite : Saturation::nosat;
      const reference::Spec& spec = e5m2 ? reference::kE5M2 : reference::kE4M3;
      const Tally t = sweep([&](uint32_t u) {
        const float x = std::bit_cast<float>(u);
        const uint8_t ours = e5m2 ? encode_e5m2(x, mode) : encode_e4m3(x, mode);
        return ours != reference::encode(x, spec, sat);
      });
      INFO((e5m2 ? "E5M2" : "E4M3") << (sat ? " satfinite" : " nosat") << ": first mismatch 0x"
                                    << std::hex << t.first);
      CHECK(t.mismatches == 0);
    }
  }
}

TEST_CASE("bf16 exhaustive: all 2^32 floats round as the double reference does", "[.exhaustive]") {
  const Tally t = sweep([](uint32_t u) {
    const float x = std::bit_cast<float>(u);
    const float ours = round_to_bf16(x);
    const float want = reference::round_bf16(x);
    if (std::isnan(want)) return !std::isnan(ours);
    return std::bit_cast<uint32_t>(ours) != std::bit_cast<uint32_t>(want);
  });
  INFO("first mismatch 0x" << std::hex << t.first);
  CHECK(t.mismatches == 0);
}
