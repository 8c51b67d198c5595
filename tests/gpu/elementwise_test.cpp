// GPU check of the backend's exact elementwise kernels (exec/backends/cuda/infra/elementwise.h):
// add / add_inplace / scale bit-identical to the CPU's one IEEE operation (NaN results compared as
// NaN: payloads are the hardware's on both sides); round_to_bf16 bit-identical to exec/fp8/bf16.h
// on edge values (ties, overflow, subnormals, NaN payloads) and 2^20 random bit patterns.
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/elementwise.h"
#include "exec/fp8/bf16.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;

using gputest::bits_of;
using gputest::expect;
using gputest::from_bits;
using gputest::same_bits;
using gputest::sync_device;
using gputest::to_device;
using gputest::to_host;

// ---------------------------------------------------------------- elementwise and BF16
// Bitwise, except that two NaNs count as equal (a NaN's payload after an arithmetic op is the
// hardware's: x86 keeps the first operand's, the GPU writes its canonical NaN).
bool same_values(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i]) && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
  return true;
}

std::vector<float> random_values(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 10.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, FLT_MAX, -FLT_MAX, 1e-40f, -1e-45f, FLT_MIN};
  for (std::size_t i = 0; i < n; i += 1013) x[i] = specials[(i / 1013) % 10];
  return x;
}

void check_elementwise() {
  const std::size_t n = 1000003;
  const std::vector<float> a = random_values(n, 41), b = random_values(n, 42);
  auto da = to_device(a), db = to_device(b);
  cu::DeviceBuffer<float> dout(n);

  std::vector<float> want(n);
  for (std::size_t i = 0; i < n; ++i) want[i] = a[i] + b[i];
  cu::add(da.get(), db.get(), n, dout.get(), nullptr);
  expect(same_values(to_host(dout), want), "add == a + b");
  cu::add_inplace(da.get(), db.get(), n, nullptr);
  expect(same_values(to_host(da), want), "add_inplace: acc == acc + x");

  for (float s : {0.37f, 1.0f / 3.0f, -2.0f}) {
    for (std::size_t i = 0; i < n; ++i) want[i] = b[i] * s;
    cu::scale(db.get(), n, s, dout.get(), nullptr);
    expect(same_values(to_host(dout), want), "scale by " + std::to_string(s));
  }
  auto dc = to_device(b);
  cu::scale(dc.get(), n, 0.37f, dc.get(), nullptr);
  for (std::size_t i = 0; i < n; ++i) want[i] = b[i] * 0.37f;
  expect(same_values(to_host(dc), want), "scale in place");
  cu::add(dc.get(), dc.get(), 0, dc.get(), nullptr);  // empty: a no-op
  sync_device("elementwise");
}

void check_bf16() {
  const uint32_t edges[] = {
      0x00000000u, 0x80000000u, 0x3F800000u, 0xBF800000u,
      0x3F808000u,  // tie, kept part even: down
      0x3F818000u,  // tie, kept part odd: up
      0x3F808001u, 0x3F807FFFu, 0xBF818000u,
      0x7F7FFFFFu,  // FLT_MAX: rounds up to Inf
      0x7F7F7FFFu, 0x7F7F8000u, 0xFF7F8000u, 0x7F7E8000u,
      0x00000001u, 0x00008000u, 0x00018000u, 0x007FFFFFu, 0x807FFFFFu, 0x00800000u, 0x0000FFFFu,
      0x7F800000u, 0xFF800000u,
      0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7FBFFFFFu, 0xFF800001u, 0x7F810000u, 0x7FFFFFFFu, 0xFFFFFFFFu,
      0x7F80FFFFu, 0x7FC0FFFFu,
  };
  std::vector<float> x;
  for (uint32_t u : edges) x.push_back(from_bits(u));
  std::mt19937_64 rng(51);
  for (int i = 0; i < (1 << 20); ++i) x.push_back(from_bits(static_cast<uint32_t>(rng())));
  std::vector<float> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = fp8::round_to_bf16(x[i]);
  auto dx = to_device(x);
  cu::DeviceBuffer<float> dout(x.size());
  cu::round_to_bf16(dx.get(), x.size(), dout.get(), nullptr);
  const std::vector<float> got = to_host(dout);
  expect(same_bits(got, want), "round_to_bf16 == exec/fp8 (bitwise, NaN payloads included)");
  for (std::size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); ++i)
    if (bits_of(got[i]) != bits_of(want[i]))
      std::printf("  bf16 edge 0x%08X: got 0x%08X, exec/fp8 0x%08X\n", edges[i], bits_of(got[i]), bits_of(want[i]));
  cu::round_to_bf16(dx.get(), x.size(), dx.get(), nullptr);
  expect(same_bits(to_host(dx), want), "round_to_bf16 in place");
  sync_device("bf16");
}

}  // namespace

TANDEM_GPU_CHECK(elementwise) {
  check_elementwise();
  check_bf16();
}
