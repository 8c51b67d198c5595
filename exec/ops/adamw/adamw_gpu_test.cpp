// The GPU half of the AdamW test: adamw_cuda.h against adamw.h over several steps (FP32 and BF16
// moments, t up to 1000), bit-identical.
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
#include "exec/ops/adamw/adamw.h"
#include "exec/ops/adamw/adamw_cuda.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;

using gputest::expect;
using gputest::same_bits;
using gputest::sync_device;
using gputest::to_device;
using gputest::to_host;

// ---------------------------------------------------------------- AdamW
void check_adamw_case(const nn::AdamWConfig& cfg, const std::vector<int64_t>& steps, const std::string& tag) {
  const std::size_t n = 100003;
  std::mt19937_64 rng(31);
  std::normal_distribution<float> p0(0.0f, 0.02f), g0(0.0f, 1e-2f);
  std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f), g(n);
  for (auto& x : p) x = p0(rng);
  auto dp = to_device(p), dm = to_device(m), dv = to_device(v);
  cu::DeviceBuffer<float> dg(n);
  for (int64_t step : steps) {
    for (std::size_t i = 0; i < n; ++i) {
      float x = g0(rng);
      if (i % 101 == 0) x = 0.0f;
      if (i % 997 == 0) x *= 1e5f;
      if (i % 1009 == 0) x = 1e-30f;
      if (i % 4099 == 0) x = -3e3f;
      g[i] = x;
    }
    dg.upload(g.data(), n);
    nn::adamw_step(p, g, m, v, step, cfg);
    cu::adamw_step(dp.get(), dg.get(), dm.get(), dv.get(), n, cu::adamw_scalars(cfg, step), nullptr);
    const std::string at = tag + " step " + std::to_string(step);
    expect(same_bits(to_host(dp), p), at + ": params == exec/ops (bitwise)");
    expect(same_bits(to_host(dm), m), at + ": m == exec/ops (bitwise)");
    expect(same_bits(to_host(dv), v), at + ": v == exec/ops (bitwise)");
  }
  sync_device(tag.c_str());
}

void check_adamw() {
  nn::AdamWConfig c;
  c.lr = 1e-3;
  check_adamw_case(c, {1, 2, 3, 4, 5}, "adamw fp32 moments");
  c.bf16_moments = true;
  check_adamw_case(c, {1, 2, 3, 1000, 1001}, "adamw bf16 moments");
  nn::AdamWConfig d;
  d.lr = 3e-4;
  d.weight_decay = 0.0;
  d.beta2 = 0.999;
  d.eps = 1e-6;
  check_adamw_case(d, {1, 2, 7}, "adamw no decay");
  bool threw = false;
  try {
    (void)cu::adamw_scalars(c, 0);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "adamw_scalars: step 0 is rejected");
}

}  // namespace

TANDEM_GPU_CHECK(adamw) { check_adamw(); }
