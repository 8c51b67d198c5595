// Test helpers for exec/comm: run one thread per local rank and collect what each one ended with.
// Catch2 assertions are not thread-safe, so rank threads record outcomes and the test thread
// asserts on them after join.
#pragma once

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/signed_index.h"
#include "exec/comm/world.h"

namespace tandem::comm::test {

struct Outcome {
  bool ran = false;                  // a local rank
  std::optional<CommError> error;    // the CommError it threw, if any
  std::string other;                 // any other exception, or a failed check (fail())
  double seconds = 0;                // how long its body ran
  bool ok() const { return !error && other.empty(); }
};

// A failed in-thread check: throw this from a rank body; it lands in Outcome::other.
struct CheckFailed : std::exception {
  explicit CheckFailed(std::string w) : what_(std::move(w)) {}
  const char* what() const noexcept override { return what_.c_str(); }
  std::string what_;
};
inline void check(bool cond, const std::string& what) {
  if (!cond) throw CheckFailed(what);
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// One line per rank that ran: "rank 2: ok", or what it failed with (for a failed check's message).
inline std::string describe(const std::vector<Outcome>& out) {
  std::string s;
  for (std::size_t r = 0; r < out.size(); ++r) {
    if (!out[r].ran) continue;
    s += "rank " + std::to_string(r) + ": " +
         (out[r].error ? std::string(out[r].error->what()) : out[r].other.empty() ? "ok" : out[r].other) + "\n";
  }
  return s;
}

// Runs body(comm, rank) on one thread per local rank of `world`; outcomes indexed by world rank.
template <class Body>
std::vector<Outcome> run_ranks(World& world, Body body) {
  std::vector<Outcome> out(idx(world.size()));
  std::vector<std::thread> threads;
  for (int r : world.local_ranks()) {
    threads.emplace_back([&world, &out, &body, r] {
      Outcome& o = out[idx(r)];
      o.ran = true;
      const auto t0 = std::chrono::steady_clock::now();
      try {
        body(world.comm(r), r);
      } catch (const CommError& e) {
        o.error = e;
      } catch (const std::exception& e) {
        o.other = e.what();
      }
      o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

// Deterministic bytes for (a, b, c, index): what a test sends, so any rank can check it.
inline std::byte pattern(int a, int b, int c, std::size_t i) {
  std::uint64_t h = 0x9e3779b97f4a7c15ULL * static_cast<std::uint64_t>(a * 1000003 + b * 1009 + c + 1) + i;
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 32;
  return static_cast<std::byte>(h & 0xff);
}
inline std::vector<std::byte> pattern_bytes(int a, int b, int c, std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = pattern(a, b, c, i);
  return v;
}

// A size in [0, max) from (a, b, c), 0 for about one pair in four.
inline std::size_t pattern_size(int a, int b, int c, std::size_t max) {
  const auto h = static_cast<std::uint64_t>(pattern(a, b, c, 0)) * 257 + static_cast<std::uint64_t>(pattern(a, b, c, 1));
  return h % 4 == 0 ? 0 : h % max;
}

// A float of magnitude 2^-20 .. 2^20 and either sign from (a, b, i): sums of such values depend on
// the order of the additions, so a test can tell group order from any other order.
inline float wide_float(int a, int b, std::size_t i) {
  std::uint32_t bits = 0;
  for (int k = 0; k < 4; ++k) bits = bits << 8 | static_cast<std::uint32_t>(pattern(a, b, 77, 4 * i + idx(k)));
  const float mantissa = 1.0f + static_cast<float>(bits & 0x7fffff) / 8388608.0f;
  const int exponent = static_cast<int>((bits >> 23) % 41) - 20;
  return std::ldexp((bits >> 31) ? -mantissa : mantissa, exponent);
}

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

}  // namespace tandem::comm::test
