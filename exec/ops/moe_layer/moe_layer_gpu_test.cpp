// GPU check of the device MoE layer (exec/ops/moe_layer/moe_layer_cuda.h), TANDEM_GPU_CHECK(moe_layer), against
// exec/ops's CPU layer on tiny-moe's MoE shape (models/tiny-moe.yaml: hidden 256, 16 routed experts
// top-4 in 4 groups (2 kept), rsf 2.5, one shared expert, moe_inter 128), 2 x 64 tokens a rank,
// a random selection bias (expert 3's at -10: it gets no rows, exercising the skipped empty
// segment and its zero gradient) and a random balance-loss d_scores:
//   wire kernels (moe_cuda_kernels.h) vs exec/fp8, bit for bit, NaN patterns included: the device
//       decode of all 256 codes; dequantize_rowwise vs fp8::dequantize on every code x edge scales
//       (subnormal products, overflow, NaN / Inf scales) and on exec/fp8's quantisation (pow2 and
//       not) of random, outlier and edge rows (zeros, float subnormals, ±3.4e38, ±464, ±Inf, NaN,
//       an all-zero row) at 6 shapes incl. 1x1, 5x129, 129x385; the device wire end to end
//       (quantize_rowwise pow2 + dequantize_rowwise) == exec/fp8's; pack_bf16 vs float_to_bf16 on
//       NaN payloads, ±Inf, ties to even / odd, overflow, subnormals and 2^20 random patterns;
//       unpack_bf16 vs bf16_to_float on all 65536 patterns; empty shapes, a negative size.
//   The host plan is exec/spec's, the CPU reference's own (tests/exec/ops checks it).
//   (a) one rank (the DeviceCommunicator of a 1-rank VirtualRankWorld) vs moe_forward_local /
//       moe_backward_local given the device's routing (`fixed`, so a near-tie of the two routers'
//       logits cannot pick other experts): output, dx, router / shared / expert weight gradients.
//   (b) EP 4 on 4 virtual ranks (one thread each, rank r holding tokens [128r, 128r + 128)) vs the
//       CPU EP-1 run of the 512-token batch (the CPU's EP is bit-identical to EP 1 by design): the
//       same tensors (router / shared grads summed over ranks, expert grads folded over sources in
//       order); and vs the device EP-1 run of the same 512 tokens: routing ids must be equal; where
//       the gates are bit-equal (the router GEMM has M = 128 vs 512, cuBLAS may pick another kernel:
//       printed), the routed output Σ_k gate·y and dx_routed must be BIT-identical (each expert's
//       segment has the same rows, order and padded length at any ep, so the same GEMM shapes).
// Numerics: exact, bf16, fp8 (fp8 with DeepSeek-V3's wires, as exec/runtime uses: dispatch and
// combine_b FP8, combine and dispatch_b BF16; exact and bf16 with exact wires, and bf16 also with
// DeepSeek's wires). Tolerances, rel-L2 over each tensor:
//   exact 1e-5: only the summation order differs (cuBLAS FP32 vs the CPU's fixed order), ~2^-24 ·
//     sqrt(K) per GEMM through a few GEMMs; the router's d_gate is a cuBLAS dot.
//   bf16 2e-3, fp8 1e-2: the ffn check's (linear_gpu_test.cpp): a reordered FP32 sum can move a value
//     across a BF16 / FP8 rounding boundary, one BF16 ulp is 2^-8 relative on that element; the
//     layer chains three such GEMMs per expert plus the wires, so the FFN bounds are used as is.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <exception>
#include <functional>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/ops/moe_layer/moe_layer_cuda.h"
#include "exec/blocks/block_ops_cuda.h"
#include "exec/backends/cuda/infra/fp8_kernels.h"
#include "exec/backends/cuda/comm/virtual_ranks.h"
#include "exec/ops/moe_layer/moe_cuda_kernels.h"
#include "exec/fp8/bf16.h"
#include "exec/fp8/fp8.h"
#include "exec/fp8/quantize.h"
#include "exec/ops/moe_layer/dispatch_plan.h"
#include "exec/ops/moe_layer/moe_layer.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/numerics_util.h"
#include "tests/gpu/gpu_check.h"

using tandem::idx;

namespace {

using tandem::gputest::make_input;

namespace cu = tandem::cuda;
namespace moe = tandem::moe;
namespace nn = tandem::nn;
using tandem::gputest::expect;
using tandem::gputest::rel_l2;
using tandem::gputest::same_bits;
using tandem::gputest::to_device;
using tandem::gputest::to_host;
using Mat = nn::Mat<float>;

constexpr int kHidden = 256, kInter = 128, kExperts = 16, kTopK = 4, kTokensPerRank = 128;
constexpr int kEmptyExpert = 3;

// ---------------------------------------------------------------------------------------- wire kernels
// The device wire kernels (moe_cuda_kernels.h) vs exec/fp8, bit for bit (NaN patterns included: the
// device mirrors the CPU's NaN results by construction, see the header).

std::vector<float> dev_dequantize(const std::vector<uint8_t>& codes, const std::vector<float>& scales, int rows,
                                  int cols) {
  cu::DeviceBuffer<uint8_t> dc = to_device(codes);
  cu::DeviceBuffer<float> ds = to_device(scales), out(idx(rows) * cols);
  tandem::gputest::sync_device("wire: uploads");
  cu::dequantize_rowwise(dc.get(), ds.get(), rows, cols, out.get(), nullptr);
  tandem::gputest::sync_device("wire: dequantize_rowwise");
  return to_host(out);
}

std::string first_diff(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return " (sizes differ)";
  for (std::size_t i = 0; i < got.size(); ++i) {
    uint32_t g = 0, w = 0;
    std::memcpy(&g, &got[i], 4);
    std::memcpy(&w, &want[i], 4);
    if (g != w) {
      char b[96];
      std::snprintf(b, sizeof b, " (first at %zu: 0x%08x vs 0x%08x)", i, g, w);
      return b;
    }
  }
  return "";
}

void check_wire_decode() {
  // All 256 codes with unit scales: decode(code) · 1 is decode(code) (NaN codes: their own NaN).
  std::vector<uint8_t> codes(256);
  for (int c = 0; c < 256; ++c) codes[idx(c)] = static_cast<uint8_t>(c);
  std::vector<float> want(256);
  for (int c = 0; c < 256; ++c) want[idx(c)] = tandem::fp8::decode_e4m3(static_cast<uint8_t>(c));
  const std::vector<float> got = dev_dequantize(codes, {1.0f, 1.0f}, 1, 256);
  expect(same_bits(got, want), "wire: device decode_e4m3 == exec/fp8 for all 256 codes" + first_diff(got, want));
  // Every code against odd scales: powers of two (subnormal products), non-pow2, FLT_MAX (overflow
  // to Inf), a quiet and a signalling NaN of either sign, ±Inf (0 · Inf). Same rows as the CPU.
  const uint32_t scale_bits[] = {0x3F800000u, 0x3E000000u, 0x00800000u, 0x0A000000u, 0x3F9D70A4u, 0x7F7FFFFFu,
                                 0x7FC00001u, 0xFF800123u, 0x7F800000u, 0xFF800000u, 0x00000001u, 0x80000000u};
  const int rows = static_cast<int>(std::size(scale_bits));
  std::vector<uint8_t> c2(idx(rows) * 256);
  std::vector<float> s2(idx(rows) * 2);
  // A NaN code times a NaN scale is left out: which NaN the CPU returns depends on the operand
  // order the compiler picks for a commutative multiply (x86 returns the first source's NaN).
  for (int r = 0; r < rows; ++r) {
    float s = 0;
    std::memcpy(&s, &scale_bits[r], 4);
    for (int c = 0; c < 256; ++c) {
      uint8_t code = static_cast<uint8_t>((c + 37 * r) & 0xFF);
      if (std::isnan(s) && (code & 0x7F) == 0x7F) code = static_cast<uint8_t>(code & 0x80);
      c2[idx(r) * 256 + c] = code;
    }
    s2[idx(r)] = s;                                       // kb 0
    s2[idx(rows + r)] = r % 2 ? s : 0.5f;                 // kb 1
  }
  tandem::fp8::RowwiseFp8 q;
  q.rows = rows;
  q.cols = 256;
  q.data = c2;
  q.scales = s2;
  const std::vector<float> w2 = tandem::fp8::dequantize(q), g2 = dev_dequantize(c2, s2, rows, 256);
  expect(same_bits(g2, w2),
         "wire: dequantize_rowwise == fp8::dequantize, every code x edge scales" + first_diff(g2, w2));
}

// exec/fp8 quantize_rowwise (pow2 and not) then dequantize, vs the device: the CPU's codes and
// scales dequantised on the device, and the full device wire (quantize_rowwise pow2 on device,
// dequantize_rowwise) vs the CPU's.
void check_wire_fp8() {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float edge[] = {0.0f, -0.0f, 1e-40f, -1e-45f, 3.4e38f, -3.4e38f, 464.0f, -464.0f, 448.0f, 1e-30f,
                        inf, -inf, nan, 1.0f, -2.5f, 0.1f};
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int cases = 0;
  const std::vector<std::pair<int, int>> shapes = {{1, 1}, {3, 128}, {5, 129}, {129, 385}, {64, 256}, {7, 1000}};
  for (const auto& [rows, cols] : shapes)
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<float> x(idx(rows) * cols);
      for (std::size_t i = 0; i < x.size(); ++i) {
        float v = normal(rng);
        if (kind == 1 && rng() % 100 == 0) v *= 1000.0f;                      // outliers
        if (kind == 2) v = rng() % 4 == 0 ? edge[rng() % std::size(edge)] : v * 1e-3f;  // edge values
        x[i] = v;
      }
      if (kind == 2 && rows > 2) std::fill(x.begin(), x.begin() + cols, 0.0f);  // an all-zero row
      for (bool pow2 : {true, false}) {
        const tandem::fp8::RowwiseFp8 q = tandem::fp8::quantize_rowwise(x.data(), rows, cols, {pow2});
        const std::vector<float> want = tandem::fp8::dequantize(q);
        const std::vector<float> got = dev_dequantize(q.data, q.scales, rows, cols);
        const std::string what = std::to_string(rows) + "x" + std::to_string(cols) + " kind " + std::to_string(kind) +
                                 (pow2 ? " pow2" : "");
        expect(same_bits(got, want), "wire: dequantize_rowwise == fp8::dequantize, " + what + first_diff(got, want));
        ++cases;
        if (!pow2) continue;
        // The wire on the device end to end (the moe layer's FP8 path).
        cu::DeviceBuffer<float> dx = to_device(x), out(x.size());
        cu::DeviceBuffer<uint8_t> dc(x.size());
        cu::DeviceBuffer<float> ds(idx(cu::k_blocks(cols)) * rows);
        tandem::gputest::sync_device("wire: uploads");
        cu::quantize_rowwise(dx.get(), rows, cols, dc.get(), ds.get(), true, nullptr);
        cu::dequantize_rowwise(dc.get(), ds.get(), rows, cols, out.get(), nullptr);
        tandem::gputest::sync_device("wire: fp8 round trip");
        const std::vector<float> trip = to_host(out);
        expect(same_bits(trip, want),
               "wire: device quantise+dequantise == exec/fp8's, " + what + first_diff(trip, want));
      }
    }
  std::printf("moe_layer wire: fp8 dequantise bit-identical on %d cases\n", cases);
}

void check_wire_bf16() {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u,
                                0x7F800001u, 0xFF800001u, 0x7F80FFFFu, 0x7FFFFFFFu, 0x7F810000u,  // NaNs
                                0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x3F808001u,  // ties even/odd, around them
                                0x7F7F8000u, 0x7F7FFFFFu, 0xFF7FFFFFu, 0x7F7F7FFFu,  // overflow to Inf / not
                                0x00000001u, 0x00008000u, 0x00018000u, 0x007FFFFFu, 0x80008000u,  // subnormals
                                0x3F800000u, 0xBF800000u, 0x00800000u};
  std::mt19937_64 rng(9);
  for (int i = 0; i < (1 << 20); ++i) bits.push_back(static_cast<uint32_t>(rng()));
  std::vector<float> x(bits.size());
  std::memcpy(x.data(), bits.data(), bits.size() * 4);
  const int cols = 64, rows = static_cast<int>((x.size() + cols - 1) / cols);
  x.resize(idx(rows) * cols, 1.0f);
  std::vector<uint16_t> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = tandem::fp8::float_to_bf16(x[i]);
  cu::DeviceBuffer<float> dx = to_device(x);
  cu::DeviceBuffer<uint16_t> packed(x.size());
  tandem::gputest::sync_device("wire: uploads");
  cu::pack_bf16(dx.get(), rows, cols, packed.get(), nullptr);
  cu::pack_bf16(dx.get(), 0, cols, packed.get(), nullptr);  // empty shapes are no-ops
  cu::unpack_bf16(packed.get(), rows, 0, dx.get(), nullptr);
  tandem::gputest::sync_device("wire: pack_bf16");
  const std::vector<uint16_t> got = to_host(packed);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < x.size(); ++i) bad += got[i] == want[i] ? 0 : 1;
  expect(bad == 0, "wire: pack_bf16 == fp8::float_to_bf16 (" + std::to_string(bad) + " of " +
                       std::to_string(x.size()) + " differ)");
  // Unpack: every one of the 65536 patterns.
  std::vector<uint16_t> all(65536);
  std::vector<float> wantf(65536);
  for (uint32_t b = 0; b < 65536; ++b) {
    all[b] = static_cast<uint16_t>(b);
    wantf[b] = tandem::fp8::bf16_to_float(static_cast<uint16_t>(b));
  }
  cu::DeviceBuffer<uint16_t> da = to_device(all);
  cu::DeviceBuffer<float> df(65536);
  tandem::gputest::sync_device("wire: uploads");
  cu::unpack_bf16(da.get(), 256, 256, df.get(), nullptr);
  tandem::gputest::sync_device("wire: unpack_bf16");
  const std::vector<float> gotf = to_host(df);
  expect(same_bits(gotf, wantf),
         "wire: unpack_bf16 == fp8::bf16_to_float, all 65536 patterns" + first_diff(gotf, wantf));
  // Empty shapes must not launch; negative sizes name the argument.
  bool threw = false;
  try {
    cu::dequantize_rowwise(nullptr, nullptr, -1, 4, nullptr, nullptr);
  } catch (const std::invalid_argument& e) {
    threw = std::string(e.what()).find("rows") != std::string::npos;
  }
  expect(threw, "wire: dequantize_rowwise(rows = -1) throws std::invalid_argument naming rows");
  cu::dequantize_rowwise(nullptr, nullptr, 0, 0, nullptr, nullptr);
  tandem::gputest::sync_device("wire: empty shapes");
  std::printf("moe_layer wire: bf16 pack %zu values, unpack 65536 patterns\n", x.size());
}

// ---------------------------------------------------------------------------------------- setup

struct Case {
  std::string name;
  nn::Numerics numerics;
  bool deepseek_wires;
  double tol;
};

moe::MoeConfig cpu_config(const Case& c, int ep) {
  moe::MoeConfig m;
  m.router.n_routed = kExperts;
  m.router.n_group = 4;
  m.router.topk_group = 2;
  m.router.top_k = kTopK;
  m.router.routed_scaling_factor = 2.5;
  m.router.norm_topk_prob = true;
  m.ep = moe::EpLayout(kExperts, ep);
  m.hidden = kHidden;
  m.moe_inter = kInter;
  m.n_shared = 1;
  m.numerics = c.numerics;
  if (c.deepseek_wires) m.use_deepseek_wires();
  return m;
}

std::vector<float> flat(const Mat& m) { return tandem::gputest::flat(m); }
std::vector<float> rows_of(const Mat& m, int first, int count) { return flat(Mat(m.middleRows(first, count))); }

// What one device rank produced (host copies).
struct FfnGrad {
  std::vector<float> gate, up, down;
};
struct RankOut {
  std::vector<int32_t> expert;
  std::vector<float> gate, out, routed, dx, dx_routed, d_router;
  FfnGrad shared;
  std::vector<std::vector<FfnGrad>> experts_by_src;  // [src][local]
};

struct DevFfn {
  cu::DeviceBuffer<float> gate, up, down;
  explicit DevFfn(const nn::FfnWeights<float>& w)
      : gate(to_device(flat(w.gate))), up(to_device(flat(w.up))), down(to_device(flat(w.down))) {}
  cu::DeviceFfnWeights view() const { return {gate.get(), up.get(), down.get(), nullptr}; }
};
struct DevGrad {
  cu::DeviceBuffer<float> gate, up, down;
  DevGrad(std::size_t gu, std::size_t d) : gate(gu), up(gu), down(d) {
    cu::check(cudaMemset(gate.get(), 0, gate.bytes()), "memset");
    cu::check(cudaMemset(up.get(), 0, up.bytes()), "memset");
    cu::check(cudaMemset(down.get(), 0, down.bytes()), "memset");
  }
  cu::DeviceFfnGrads view() const { return {gate.get(), up.get(), down.get()}; }
  FfnGrad host() const { return {to_host(gate), to_host(up), to_host(down)}; }
};

// The whole layer on one device rank: forward, backward-input, weight passes, in the runtime's order.
RankOut run_rank(const moe::MoeConfig& mc, const moe::MoeWeights<float>& all, cu::DeviceCommunicator& comm,
                 const std::vector<int>& group, const Mat& x, const Mat& dout, const Mat& d_scores) {
  const cu::MoeConfig& cfg = mc;
  const int ep_rank = static_cast<int>(std::find(group.begin(), group.end(), comm.rank()) - group.begin());
  const int per = cfg.experts_per_rank(), tokens = static_cast<int>(x.rows());
  cu::Stream compute, comm_stream;
  cu::Blas blas(compute.get());
  cu::LtFp8Gemm lt;
  cu::DeviceLinear lin(blas, lt, cfg.numerics);
  cu::DeviceMoeLayer layer(cfg, blas, lin, comm, group, comm_stream.get());

  cu::DeviceBuffer<float> router = to_device(flat(all.router));
  cu::DeviceBuffer<float> bias = to_device(std::vector<float>(all.bias.data(), all.bias.data() + all.bias.size()));
  std::vector<DevFfn> experts;
  for (int e = 0; e < per; ++e) experts.emplace_back(all.experts[idx(ep_rank * per + e)]);
  DevFfn shared(all.shared);
  cu::DeviceMoeWeights w;
  w.router = router.get();
  w.bias = bias.get();
  for (const DevFfn& f : experts) w.experts.push_back(f.view());
  w.shared = shared.view();

  const std::size_t ih = idx(kInter) * kHidden;
  DevGrad g_shared(ih, ih);
  std::vector<std::vector<DevGrad>> g_experts(idx(cfg.ep.ep));
  std::vector<std::vector<cu::DeviceFfnGrads>> g_views(idx(cfg.ep.ep));
  for (int s = 0; s < cfg.ep.ep; ++s) {
    g_experts[idx(s)].reserve(idx(per));
    for (int e = 0; e < per; ++e) {
      g_experts[idx(s)].emplace_back(ih, ih);
      g_views[idx(s)].push_back(g_experts[idx(s)].back().view());
    }
  }
  cu::DeviceBuffer<float> d_router(idx(kExperts) * kHidden);
  cu::check(cudaMemset(d_router.get(), 0, d_router.bytes()), "memset");

  cu::DeviceBuffer<float> dx_in = to_device(flat(x)), ddout = to_device(flat(dout)), dscores = to_device(flat(d_scores));
  const std::size_t th = idx(tokens) * kHidden;
  cu::DeviceBuffer<float> out(th), dx(th);
  tandem::gputest::sync_device("moe_layer: uploads");

  cu::DeviceMoeTokenState ts;
  cu::DeviceMoeExpertState es;
  layer.route(w, dx_in.get(), tokens, ts);          // attn_f
  layer.dispatch_pack(ts);
  layer.dispatch(ts, es);                            // dispatch_f
  layer.experts_forward(w, es);                      // mlp_f
  layer.combine_pack(es);
  layer.shared_forward(w, ts);
  layer.combine(es, ts, out.get());                  // combine_f
  layer.combine_backward(ts, es, ddout.get());       // combine_b
  layer.experts_backward_input(w, es);               // mlp_b
  layer.shared_backward_input(w, ts, ddout.get());
  layer.dispatch_backward(es, ts);                   // dispatch_b
  layer.router_backward_input(w, ts, dscores.get(), dx.get());  // attn_b
  layer.experts_backward_weight(es, g_views);        // mlp_w
  layer.shared_backward_weight(ts, ddout.get(), g_shared.view());
  layer.router_backward_weight(ts, d_router.get());  // attn_w
  compute.sync("moe_layer: compute");
  comm_stream.sync("moe_layer: comm");

  RankOut r;
  r.expert = ts.expert_host;
  r.gate = to_host(ts.gate);
  r.out = to_host(out);
  r.routed = to_host(ts.routed);
  r.dx = to_host(dx);
  r.dx_routed = to_host(ts.dx_routed);
  r.d_router = to_host(d_router);
  r.shared = g_shared.host();
  r.experts_by_src.resize(idx(cfg.ep.ep));
  for (int s = 0; s < cfg.ep.ep; ++s)
    for (int e = 0; e < per; ++e)
      r.experts_by_src[idx(s)].push_back(
          g_experts[idx(s)][idx(e)].host());
  return r;
}

void compare(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double tol) {
  const bool shaped = got.size() == want.size();
  const double e = shaped ? rel_l2(got, want) : 1e30;
  std::printf("  %-44s rel-L2 %.3g (tol %.0e)\n", what.c_str(), e, tol);
  expect(shaped && e <= tol, what + ": rel-L2 " + std::to_string(e) + " > " + std::to_string(tol));
}

void add_into(std::vector<float>& acc, const std::vector<float>& v) {
  if (acc.empty()) acc.assign(v.size(), 0.0f);
  for (std::size_t i = 0; i < v.size(); ++i) acc[i] += v[i];
}

struct CpuRef {
  Mat out, dx;
  moe::MoeGrads<float> grads;
};
CpuRef cpu_run(const moe::MoeConfig& mc, const moe::MoeWeights<float>& w, const Mat& x, const Mat& dout,
               const Mat& d_scores, const std::vector<int32_t>& expert) {
  moe::Routing fixed;
  fixed.tokens = static_cast<int>(x.rows());
  fixed.top_k = kTopK;
  fixed.expert = expert;
  moe::MoeLocalState<float> st;
  CpuRef r;
  r.out = moe::moe_forward_local<float>(mc, w, x, &st, &fixed);
  r.grads = moe::zero_grads(w);
  r.dx = moe::moe_backward_local<float>(mc, w, st, dout, r.grads, &d_scores);
  return r;
}

moe::MoeWeights<float> weights(const moe::MoeConfig& mc1) {
  moe::MoeWeights<float> w = moe::init_moe_weights<float>(mc1, 0, 0x5eed);
  w.bias = tandem::exec_test::random_mat<float>(1, kExperts, 77, 0.01).row(0).transpose();
  w.bias(kEmptyExpert) = -10.0f;  // scores lie in (0, 1): expert 3 is never chosen, its segment has no rows
  return w;
}

void run_case(const Case& c) {
  std::printf("moe_layer %s\n", c.name.c_str());
  const moe::MoeConfig mc1 = cpu_config(c, 1);
  const moe::MoeWeights<float> w = weights(mc1);
  const int T4 = 4 * kTokensPerRank;
  const Mat x = tandem::exec_test::random_mat<float>(T4, kHidden, 11, 1.0);
  const Mat dout = tandem::exec_test::random_mat<float>(T4, kHidden, 12, 1.0);
  const Mat d_scores = tandem::exec_test::random_mat<float>(T4, kExperts, 13, 0.1);

  // (a) one rank, the first 128 tokens.
  {
    cu::VirtualRankWorld world(1);
    cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
    const Mat xa = x.topRows(kTokensPerRank), da = dout.topRows(kTokensPerRank), sa = d_scores.topRows(kTokensPerRank);
    const RankOut g = run_rank(mc1, w, world.comm(0), {0}, xa, da, sa);
    const CpuRef ref = cpu_run(mc1, w, xa, da, sa, g.expert);
    compare("ep1 output", g.out, flat(ref.out), c.tol);
    compare("ep1 dx", g.dx, flat(ref.dx), c.tol);
    compare("ep1 router grad", g.d_router, flat(ref.grads.router), c.tol);
    compare("ep1 shared gate/up/down grads", [&] {
      std::vector<float> v = g.shared.gate;
      v.insert(v.end(), g.shared.up.begin(), g.shared.up.end());
      v.insert(v.end(), g.shared.down.begin(), g.shared.down.end());
      return v;
    }(), [&] {
      std::vector<float> v = flat(ref.grads.shared.gate);
      const auto u = flat(ref.grads.shared.up), d = flat(ref.grads.shared.down);
      v.insert(v.end(), u.begin(), u.end());
      v.insert(v.end(), d.begin(), d.end());
      return v;
    }(), c.tol);
    for (int e = 0; e < kExperts; ++e) {
      const FfnGrad& ge = g.experts_by_src[0][idx(e)];
      const auto& re = ref.grads.experts[idx(e)];
      if (e == kEmptyExpert) {  // no rows: its gradient must stay zero
        expect(re.down.norm() == 0, "cpu: expert 3 got no rows");
        expect(ge.down == flat(re.down) && ge.gate == flat(re.gate), "ep1 expert " + std::to_string(e) + " grads zero");
        continue;
      }
      compare("ep1 expert " + std::to_string(e) + " grads (gate, up, down)",
              [&] { std::vector<float> v = ge.gate; v.insert(v.end(), ge.up.begin(), ge.up.end());
                    v.insert(v.end(), ge.down.begin(), ge.down.end()); return v; }(),
              [&] { std::vector<float> v = flat(re.gate); const auto u = flat(re.up), d = flat(re.down);
                    v.insert(v.end(), u.begin(), u.end()); v.insert(v.end(), d.begin(), d.end()); return v; }(),
              c.tol);
    }
  }

  // (b) EP 4 on 4 virtual ranks vs the CPU EP 1 and the device EP 1 of the 512 tokens.
  const moe::MoeConfig mc4 = cpu_config(c, 4);
  std::vector<RankOut> ranks(4);
  {
    cu::VirtualRankWorld world(4);
    std::vector<std::string> errors(4);
    std::vector<std::thread> threads;
    for (int r = 0; r < 4; ++r)
      threads.emplace_back([&, r] {
        try {
          cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
          const int f = r * kTokensPerRank;
          ranks[idx(r)] =
              run_rank(mc4, w, world.comm(r), {0, 1, 2, 3}, x.middleRows(f, kTokensPerRank),
                       dout.middleRows(f, kTokensPerRank), d_scores.middleRows(f, kTokensPerRank));
        } catch (const std::exception& e) {
          errors[idx(r)] = e.what();
          world.comm(r).abort(std::string("moe_layer check: ") + e.what());
        }
      });
    for (std::thread& t : threads) t.join();
    for (int r = 0; r < 4; ++r)
      if (!errors[idx(r)].empty()) {
        expect(false, "ep4 rank " + std::to_string(r) + ": " + errors[idx(r)]);
        return;
      }
  }
  std::vector<int32_t> expert4;
  std::vector<float> gate4, out4, routed4, dx4, dxr4, d_router4, shared4;
  for (const RankOut& r : ranks) {
    expert4.insert(expert4.end(), r.expert.begin(), r.expert.end());
    gate4.insert(gate4.end(), r.gate.begin(), r.gate.end());
    out4.insert(out4.end(), r.out.begin(), r.out.end());
    routed4.insert(routed4.end(), r.routed.begin(), r.routed.end());
    dx4.insert(dx4.end(), r.dx.begin(), r.dx.end());
    dxr4.insert(dxr4.end(), r.dx_routed.begin(), r.dx_routed.end());
    add_into(d_router4, r.d_router);
    std::vector<float> s = r.shared.gate;
    s.insert(s.end(), r.shared.up.begin(), r.shared.up.end());
    s.insert(s.end(), r.shared.down.begin(), r.shared.down.end());
    add_into(shared4, s);
  }
  const CpuRef ref = cpu_run(mc1, w, x, dout, d_scores, expert4);
  compare("ep4 output", out4, flat(ref.out), c.tol);
  compare("ep4 dx", dx4, flat(ref.dx), c.tol);
  compare("ep4 router grad (sum over ranks)", d_router4, flat(ref.grads.router), c.tol);
  {
    std::vector<float> v = flat(ref.grads.shared.gate);
    const auto u = flat(ref.grads.shared.up), d = flat(ref.grads.shared.down);
    v.insert(v.end(), u.begin(), u.end());
    v.insert(v.end(), d.begin(), d.end());
    compare("ep4 shared grads (sum over ranks)", shared4, v, c.tol);
  }
  std::vector<float> eg4, egref;
  for (int e = 0; e < kExperts; ++e) {
    const RankOut& owner = ranks[idx(e / 4)];
    std::vector<float> acc;
    for (int s = 0; s < 4; ++s) {
      const FfnGrad& g = owner.experts_by_src[idx(s)][idx(e % 4)];
      std::vector<float> v = g.gate;
      v.insert(v.end(), g.up.begin(), g.up.end());
      v.insert(v.end(), g.down.begin(), g.down.end());
      add_into(acc, v);
    }
    eg4.insert(eg4.end(), acc.begin(), acc.end());
    const auto& re = ref.grads.experts[idx(e)];
    for (const Mat* m : {&re.gate, &re.up, &re.down}) {
      const auto f = flat(*m);
      egref.insert(egref.end(), f.begin(), f.end());
    }
  }
  compare("ep4 expert grads (sources folded in order)", eg4, egref, c.tol);

  // Device EP 1 of the same 512 tokens.
  cu::VirtualRankWorld world1(1);
  cu::check(cudaSetDevice(world1.device()), "cudaSetDevice");
  const RankOut one = run_rank(mc1, w, world1.comm(0), {0}, x, dout, d_scores);
  expect(one.expert == expert4, "ep4 routing ids == device ep1's");
  const bool gates_equal = same_bits(one.gate, gate4);
  std::printf("  device ep4 vs ep1: routing %s, gates %s\n", one.expert == expert4 ? "equal" : "DIFFER",
              gates_equal ? "bit-identical" : "differ (router GEMM M = 128 vs 512)");
  if (one.expert == expert4 && gates_equal) {
    expect(same_bits(one.routed, routed4), "device ep4 routed output bit-identical to ep1");
    expect(same_bits(one.dx_routed, dxr4), "device ep4 dx_routed bit-identical to ep1");
    std::printf("  device ep4 vs ep1: routed output %s, dx_routed %s\n",
                same_bits(one.routed, routed4) ? "bit-identical" : "DIFFER",
                same_bits(one.dx_routed, dxr4) ? "bit-identical" : "DIFFER");
  }
  compare("device ep4 vs ep1 output", out4, one.out, c.tol);
  compare("device ep4 vs ep1 dx", dx4, one.dx, c.tol);
}


// gather_rows / combine_rows (moe_cuda_kernels.h): the permutation into 128-row-padded expert
// segments is an exact copy; the top-k combine within 1e-5 of FP64.
void check_permute() {
  const int tokens = 50, cols = 96, k = 2;
  const std::vector<float> x = make_input(tokens, cols, 0, 9);
  std::vector<int32_t> src_row(256, -1), row(idx(tokens) * k);
  std::vector<float> weight(row.size());
  for (int t = 0; t < tokens; ++t) {
    src_row[t] = t;            // expert 0 segment: rows 0..49, padded to 128
    src_row[128 + t] = tokens - 1 - t;  // expert 1 segment, reversed
    row[idx(t) * k] = t;
    row[idx(t) * k + 1] = t % 3 == 0 ? -1 : 128 + (tokens - 1 - t);
    weight[idx(t) * k] = 0.25f + 0.01f * t;
    weight[idx(t) * k + 1] = 0.5f;
  }
  auto dx = to_device(x);
  auto dsrc = to_device(src_row), drow = to_device(row);
  auto dw = to_device(weight);
  cu::DeviceBuffer<float> perm(256 * idx(cols)), comb(idx(tokens) * cols);
  cu::gather_rows(dx.get(), dsrc.get(), 256, cols, perm.get(), nullptr);
  cu::combine_rows(perm.get(), drow.get(), dw.get(), tokens, k, cols, comb.get(), nullptr);
  const std::vector<float> gp = to_host(perm, perm.size()), gc = to_host(comb, comb.size());
  bool exact = true;
  for (int i = 0; i < 256; ++i)
    for (int c = 0; c < cols; ++c) {
      const float want = src_row[i] >= 0 ? x[idx(src_row[i]) * cols + c] : 0.0f;
      exact = exact && gp[idx(i) * cols + c] == want;
    }
  expect(exact, "gather_rows: exact copy with zero padding rows");
  double cworst = 0;
  for (int t = 0; t < tokens; ++t)
    for (int c = 0; c < cols; ++c) {
      double want = 0;
      for (int j = 0; j < k; ++j) {
        const int s = row[idx(t) * k + j];
        if (s >= 0) want += static_cast<double>(weight[idx(t) * k + j]) * gp[idx(s) * cols + c];
      }
      cworst = std::max(cworst, std::fabs(gc[idx(t) * cols + c] - want));
    }
  expect(cworst < 1e-5, "combine_rows vs FP64");
}

}  // namespace

TANDEM_GPU_CHECK(moe_layer) {
  check_wire_decode();
  check_wire_fp8();
  check_wire_bf16();
  const std::vector<Case> cases = {
      {"exact", nn::Numerics::exact, false, 1e-5},
      {"bf16", nn::Numerics::bf16, false, 2e-3},
      {"bf16, DeepSeek wires", nn::Numerics::bf16, true, 2e-3},
      {"fp8, DeepSeek wires", nn::Numerics::fp8, true, 1e-2},
  };
  for (const Case& c : cases) run_case(c);
}

TANDEM_GPU_CHECK(permute) { check_permute(); }
