// GPU check `attention`: MLA on the device (exec/ops/attention/attention_cuda.h) against the CPU reference
// (exec/ops/attention/attention.h, FP32, with the same Numerics: exact, and bf16 / fp8 projections).
//   rope   the RoPE kernel is bit-identical to nn::rope_apply (forward and inverse, in place on
//          every head's q_pe, out of place from kv_a into k_pe, and a 128-head x 64 shape that
//          needs two shared-memory passes)
//   core   attention_core_forward / _backward vs nn's on the same q, kv, k_pe, d_attn (qk_nope
//          32 and 0; all (sequence, head) pairs in one batch and 3 at a time)
//   mla    forward output, saved state (q_a, kv_a, attn, log-sum-exp; the kept tensors when
//          recompute is off), every input gradient and every weight gradient (two weight passes
//          into the same accumulators, so += is checked) vs mla_forward / mla_backward_input /
//          mla_backward_weight: tiny-moe's MLA shape (q_lora 128) 2 x 64 tokens; the same with
//          recompute off (also bit-identical on the device to the recompute run, as on the CPU);
//          with a small core budget (chunks of 5 / 3 pairs, straddling sequences); q_lora_rank 0;
//          3 sequences of 1 token. Determinism: two runs of the first case are bit-identical.
//          All these in Numerics::exact.
//   mla bf16 / fp8   the same tensors (forward, saved state, every input gradient, every weight
//          gradient) with the seven projections in BF16 / FP8 (DeviceLinear) vs exec/ops run with
//          the same Numerics: tiny-moe 2x64 (q_lora 128) and q_lora_rank 0. The projections'
//          outputs that are saved (q_a, kv_a) and the layer output are BF16 values (rounded as
//          the CPU rounds them). fp8: with prepare_weights, every cached Fp8Weight (codes, scales,
//          transposed codes and scales) is bit-identical to quantising its weight per call, and
//          every result is bit-identical to the run that quantises per call.
// Tolerances (rel-L2):
//   exact  1e-4 (a float is 6e-8 relative; the GEMMs and reductions sum in another order than the
//          CPU's sequential loops and expf/logf are CUDA's, errors of 1e-6 are expected).
//   bf16   2e-3, fp8 1e-2, as the FFN check (exec/ops/linear/linear_gpu_test.cpp): the BF16 roundings and FP8
//          codes of a projection's inputs are the CPU's bit for bit where those inputs agree, and
//          its products are exact, so a projection alone differs only by cuBLAS(Lt)'s accumulation
//          order (~1e-4 for fp8). But the projections are chained through FP32 pieces whose last
//          bit differs from the CPU (the RMSNorm's tree-reduced sum, the core's expf and GEMM order),
//          so a downstream BF16 rounding flips by an ulp (2^-8 relative) here and there, and in fp8
//          an E4M3 code (2^-4) or a 1x128 tile's amax occasionally moves; a few such flips in
//          thousands of elements give rel-L2 ~1e-3 (bf16) and a few 1e-3 (fp8).
// The denominator is max(‖want‖, 0.1·√n): tensors that are exactly zero on the CPU (the query path
// at seq_len 1, where the softmax is constant) compare as an RMS error below 1e-5 (exact).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/ops/attention/attention_cuda.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/ops/attention/attention.h"
#include "models/model_card.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"
#include "tests/test_paths.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;
namespace nn = tandem::nn;
using gputest::expect;
using gputest::name;
using gputest::is_bf16;
using gputest::flat;
using gputest::same_bits;
using gputest::to_device;
using gputest::to_host;

constexpr double kTol = 1e-4;  // exact; see the header for all three
using Tensors = std::map<std::string, std::vector<float>>;

// ‖got − want‖₂ / max(‖want‖₂, 0.1·√n)
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    num += d * d;
    den += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  const double floor2 = 0.01 * static_cast<double>(want.size());
  return std::sqrt(num / std::max(den, floor2 > 0 ? floor2 : 1.0));
}

void compare(const std::string& tag, const std::string& name, const std::vector<float>& got,
             const std::vector<float>& want, double tol = kTol) {
  if (got.size() != want.size()) {
    expect(false, tag + ": " + name + " has " + std::to_string(got.size()) + " elements, want " +
                      std::to_string(want.size()));
    return;
  }
  const double e = rel_err(got, want);
  std::printf("  %-26s rel-L2 %.2e\n", name.c_str(), e);
  char buf[64];
  std::snprintf(buf, sizeof buf, " rel-L2 %.3e > %.0e", e, tol);
  expect(e <= tol, tag + ": " + name + buf);
}

// ---------------------------------------------------------------- rope

void rope_case(const std::string& tag, nn::Mat<float> m, int64_t col, int64_t width, int64_t count, int64_t stride,
               int64_t seq_len) {
  const double theta = 10000.0;
  const int rows = static_cast<int>(m.rows()), ld = static_cast<int>(m.cols());
  auto table = to_device(cu::rope_cos_sin(static_cast<int>(seq_len), static_cast<int>(width), theta));
  auto d = to_device(flat(m));
  nn::Mat<float> fwd = m;
  nn::rope_apply(fwd, col, width, count, stride, seq_len, theta, false);
  cu::rope_apply(d.get() + col, ld, d.get() + col, ld, rows, static_cast<int>(width), static_cast<int>(count),
                 static_cast<int>(stride), static_cast<int>(seq_len), table.get(), false, nullptr);
  expect(same_bits(to_host(d), flat(fwd)), tag + ": forward (in place) differs from nn::rope_apply");
  nn::Mat<float> inv = fwd;
  nn::rope_apply(inv, col, width, count, stride, seq_len, theta, true);
  cu::rope_apply(d.get() + col, ld, d.get() + col, ld, rows, static_cast<int>(width), static_cast<int>(count),
                 static_cast<int>(stride), static_cast<int>(seq_len), table.get(), true, nullptr);
  expect(same_bits(to_host(d), flat(inv)), tag + ": inverse (in place) differs from nn::rope_apply");
  gputest::sync_device("rope");
}

void check_rope() {
  // every head's q_pe of tiny-moe's q (4 heads of 32 + 16), 2 sequences of 64
  rope_case("rope q", exec_test::random_mat<float>(128, 4 * 48, 11), 32, 16, 4, 48, 64);
  // DeepSeek-V3's q (128 heads of 128 + 64): 8192 rope columns, two shared-memory passes
  rope_case("rope V3 q", exec_test::random_mat<float>(12, 128 * 192, 12), 128, 64, 128, 192, 4);
  // k_pe out of place from kv_a [M, 128 + 16] into [M, 16]
  const nn::Mat<float> kv_a = exec_test::random_mat<float>(128, 144, 13);
  nn::Mat<float> k_pe = kv_a.rightCols(16);
  nn::rope_apply(k_pe, 0, 16, 1, 16, 64, 10000.0, false);
  auto table = to_device(cu::rope_cos_sin(64, 16, 10000.0));
  auto d_kv_a = to_device(flat(kv_a));
  cu::DeviceBuffer<float> d_k_pe(128 * 16);
  cu::rope_apply(d_kv_a.get() + 128, 144, d_k_pe.get(), 16, 128, 16, 1, 16, 64, table.get(), false, nullptr);
  expect(same_bits(to_host(d_k_pe), flat(k_pe)), "rope k_pe: out of place differs from nn::rope_apply");
  expect(same_bits(to_host(d_kv_a), flat(kv_a)), "rope k_pe: the input kv_a was modified");
  gputest::sync_device("rope");
  std::printf("rope: checked (bitwise)\n");
}

// ---------------------------------------------------------------- core

void check_core(int nope, int chunk_pairs) {
  const int H = 4, rope = 16, dv = 32, S = 64, M = 2 * S, qk = nope + rope;
  const double scale = 1.0 / std::sqrt(static_cast<double>(qk));
  const std::string tag = "core nope " + std::to_string(nope) + " chunk " + std::to_string(chunk_pairs);
  std::printf("%s\n", tag.c_str());
  const nn::Mat<float> q = exec_test::random_mat<float>(M, H * qk, 21);
  const nn::Mat<float> kv = exec_test::random_mat<float>(M, H * (nope + dv), 22);
  const nn::Mat<float> k_pe = exec_test::random_mat<float>(M, rope, 23);
  const nn::Mat<float> d_attn = exec_test::random_mat<float>(M, H * dv, 24);
  nn::Mat<float> attn, lse, dq, dkv, dk_pe;
  nn::attention_core_forward(q, kv, k_pe, H, nope, rope, dv, S, scale, attn, lse);
  nn::attention_core_backward(q, kv, k_pe, attn, lse, d_attn, H, nope, rope, dv, S, scale, dq, dkv, dk_pe);

  cu::Blas blas(nullptr);
  cu::AttentionShape s;
  s.rows = M;
  s.heads = H;
  s.nope = nope;
  s.rope = rope;
  s.dv = dv;
  s.seq_len = S;
  s.scale = static_cast<float>(scale);
  cu::DeviceBuffer<float> ws(std::max(cu::attention_core_workspace(s, chunk_pairs, false),
                                      cu::attention_core_workspace(s, chunk_pairs, true)));
  auto d_q = to_device(flat(q));
  auto d_kv = to_device(flat(kv));
  auto d_k_pe = to_device(flat(k_pe));
  auto d_d_attn = to_device(flat(d_attn));
  cu::DeviceBuffer<float> g_attn(attn.size()), g_lse(lse.size()), g_dq(dq.size()), g_dkv(dkv.size()),
      g_dk_pe(dk_pe.size());
  cu::attention_core_forward(blas, s, chunk_pairs, d_q.get(), d_kv.get(), d_k_pe.get(), ws.get(), g_attn.get(),
                             g_lse.get());
  cu::attention_core_backward(blas, s, chunk_pairs, d_q.get(), d_kv.get(), d_k_pe.get(), g_attn.get(), g_lse.get(),
                              d_d_attn.get(), ws.get(), g_dq.get(), g_dkv.get(), g_dk_pe.get());
  gputest::sync_device("core");
  compare(tag, "attn", to_host(g_attn), flat(attn));
  compare(tag, "lse", to_host(g_lse), flat(lse));
  compare(tag, "dq", to_host(g_dq), flat(dq));
  compare(tag, "dkv", to_host(g_dkv), flat(dkv));
  compare(tag, "dk_pe", to_host(g_dk_pe), flat(dk_pe));
}

// ---------------------------------------------------------------- mla

// tiny-moe's MLA shape, read from its card (models/tiny-moe.yaml: hidden 256, 4 heads, q_lora 128,
// kv_lora 128, qk_nope 32, qk_rope 16, v_head 32, rms_norm_eps 1e-6), with q_lora_rank replaced.
nn::MlaConfig tiny_moe(int64_t q_lora_rank) {
  const Result<ModelCard> card = load_model_card(tandem::test::repo("models/tiny-moe.yaml"));
  if (!card.ok()) throw std::runtime_error("cannot read models/tiny-moe.yaml");
  nn::MlaConfig c = nn::mla_config(card.value());
  c.q_lora_rank = q_lora_rank;
  return c;
}

// f(name, nn tensor, device pointer) for the eight tensors (both structs use HF's names).
template <class W, class P, class F>
void for_each_tensor(W& w, P& p, F&& f) {
  f("q_a_proj", w.q_a_proj, p.q_a_proj);
  f("q_a_layernorm", w.q_a_layernorm, p.q_a_layernorm);
  f("q_b_proj", w.q_b_proj, p.q_b_proj);
  f("q_proj", w.q_proj, p.q_proj);
  f("kv_a_proj_with_mqa", w.kv_a_proj_with_mqa, p.kv_a_proj_with_mqa);
  f("kv_a_layernorm", w.kv_a_layernorm, p.kv_a_layernorm);
  f("kv_b_proj", w.kv_b_proj, p.kv_b_proj);
  f("o_proj", w.o_proj, p.o_proj);
}

// Device copies of a set of nn::MlaWeights (absent tensors: nullptr).
struct DeviceTensors {
  std::vector<cu::DeviceBuffer<float>> store;
  cu::MlaDeviceGrads p;
  nn::MlaWeights<float> shapes;

  explicit DeviceTensors(const nn::MlaWeights<float>& w) : shapes(w) {
    store.reserve(8);
    for_each_tensor(w, p, [&](const char*, const auto& t, float*& ptr) {
      if (t.size() == 0) return;
      store.emplace_back(idx(t.size()));
      store.back().upload(t.data(), idx(t.size()));
      ptr = store.back().get();
    });
  }
  cu::MlaDeviceWeights weights() const {
    cu::MlaDeviceWeights c;
    for_each_tensor(c, p, [](const char*, const float*& to, float* from) { to = from; });
    return c;
  }
};

struct Inputs {
  nn::MlaConfig c;
  nn::MlaWeights<float> w;
  nn::Mat<float> x, dy;
  int64_t seq_len = 0;
};

Inputs make_inputs(const nn::MlaConfig& c, int64_t sequences, int64_t seq_len, uint64_t seed) {
  Inputs in;
  in.c = c;
  in.seq_len = seq_len;
  in.w = nn::mla_zero_weights<float>(c);
  uint64_t k = seed * 1000;
  // matrices ~ N(0, 1/fan_in): activations and scores of order 1, a softmax that is neither flat
  // nor one-hot; norm weights 1 + N(0, 0.2²)
  auto mat = [&](nn::Mat<float>& m) {
    m = exec_test::random_mat<float>(m.rows(), m.cols(), ++k, 1.0 / std::sqrt(static_cast<double>(m.cols())));
  };
  auto norm = [&](nn::Vec<float>& v) {
    const nn::Mat<float> r = exec_test::random_mat<float>(v.size(), 1, ++k, 0.2);
    for (int64_t i = 0; i < v.size(); ++i) v[i] = 1.0f + r(i, 0);
  };
  if (c.q_lora_rank > 0) {
    mat(in.w.q_a_proj);
    norm(in.w.q_a_layernorm);
    mat(in.w.q_b_proj);
  } else {
    mat(in.w.q_proj);
  }
  mat(in.w.kv_a_proj_with_mqa);
  norm(in.w.kv_a_layernorm);
  mat(in.w.kv_b_proj);
  mat(in.w.o_proj);
  in.x = exec_test::random_mat<float>(sequences * seq_len, c.hidden, ++k);
  in.dy = exec_test::random_mat<float>(sequences * seq_len, c.hidden, ++k);
  return in;
}

// The output, the saved state and the input gradients by name (CPU and device structs use the same
// field names); get(x) reads one of them into floats.
template <class Out, class Saved, class Grad, class Get>
Tensors state(const Out& out, const Saved& s, const Grad& g, Get get) {
  Tensors t;
  t["out"] = get(out);
  t["saved.q_a"] = get(s.q_a);
  t["saved.kv_a"] = get(s.kv_a);
  t["saved.attn"] = get(s.attn);
  t["saved.lse"] = get(s.lse);
  if (s.kept) {
    t["saved.q_a_normed"] = get(s.q_a_normed);
    t["saved.kv_a_normed"] = get(s.kv_a_normed);
    t["saved.q"] = get(s.q);
    t["saved.kv"] = get(s.kv);
    t["saved.k_pe"] = get(s.k_pe);
  }
  t["g.dx"] = get(g.dx);
  t["g.d_q"] = get(g.d_q);
  t["g.q_a_normed"] = get(g.q_a_normed);
  t["g.d_q_a_normed"] = get(g.d_q_a_normed);
  t["g.d_q_a"] = get(g.d_q_a);
  t["g.d_kv_a"] = get(g.d_kv_a);
  t["g.kv_a_normed"] = get(g.kv_a_normed);
  t["g.d_kv_a_normed"] = get(g.d_kv_a_normed);
  t["g.d_kv"] = get(g.d_kv);
  return t;
}

Tensors run_cpu(const Inputs& in, cu::Numerics num = cu::Numerics::exact) {
  const nn::Numerics ex = num;
  nn::MlaSaved<float> s;
  const nn::Mat<float> out = nn::mla_forward<float>(in.c, in.w, in.x, in.seq_len, ex, &s);
  const nn::MlaInputGrad<float> g = nn::mla_backward_input<float>(in.c, in.w, s, in.dy, ex);
  nn::MlaWeights<float> grads = nn::mla_zero_weights<float>(in.c);
  for (int rep = 0; rep < 2; ++rep) nn::mla_backward_weight<float>(in.c, s, g, in.dy, ex, grads);
  Tensors t = state(out, s, g, [](const auto& m) { return flat(m); });
  cu::MlaDeviceGrads no_pointers;
  for_each_tensor(grads, no_pointers, [&](const char* name, const auto& m, float*) {
    if (m.size() > 0) t[std::string("grad.") + name] = flat(m);
  });
  return t;
}

// The projections of a config: which weight, its device pointer in w, its shape [n, k].
struct ProjWeight {
  cu::MlaProj which;
  const char* name;
  const float* w;
  int n, k;
};
std::vector<ProjWeight> projections(const nn::MlaConfig& c, const cu::MlaDeviceWeights& w) {
  const int H = static_cast<int>(c.heads), qk = static_cast<int>(c.qk_head()), hid = static_cast<int>(c.hidden);
  const int ql = static_cast<int>(c.q_lora_rank), kl = static_cast<int>(c.kv_lora_rank);
  std::vector<ProjWeight> p;
  if (ql > 0) {
    p.push_back({cu::MlaProj::q_a, "q_a_proj", w.q_a_proj, ql, hid});
    p.push_back({cu::MlaProj::q_b, "q_b_proj", w.q_b_proj, H * qk, ql});
  } else {
    p.push_back({cu::MlaProj::q, "q_proj", w.q_proj, H * qk, hid});
  }
  p.push_back({cu::MlaProj::kv_a, "kv_a_proj_with_mqa", w.kv_a_proj_with_mqa, kl + static_cast<int>(c.qk_rope), hid});
  p.push_back({cu::MlaProj::kv_b, "kv_b_proj", w.kv_b_proj, H * static_cast<int>(c.qk_nope + c.v_head), kl});
  p.push_back({cu::MlaProj::o, "o_proj", w.o_proj, hid, H * static_cast<int>(c.v_head)});
  return p;
}

// Every prepared Fp8Weight of mla against a fresh per-call quantisation of its weight.
void check_prepared(const std::string& tag, const Inputs& in, const cu::MlaDeviceWeights& w, cu::MlaDevice& mla,
                    cu::DeviceLinear& lin) {
  for (const ProjWeight& p : projections(in.c, w)) {
    const cu::Fp8Weight* got = mla.prepared_weight(p.which);
    if (got == nullptr) {
      expect(false, tag + ": " + p.name + " was not prepared");
      continue;
    }
    cu::Fp8Weight want;
    lin.quantize_weight(cu::ConstDeviceMat(p.w, p.n, p.k), want);
    cu::check(cudaStreamSynchronize(mla.stream()), "prepared weights");
    const std::size_t codes = idx(want.padded_rows()) * want.padded_cols();
    const bool same = got->rows() == want.rows() && got->cols() == want.cols() &&
                      got->padded_rows() == want.padded_rows() && got->padded_cols() == want.padded_cols() &&
                      got->scales_count() == want.scales_count() && got->t_scales_count() == want.t_scales_count() &&
                      to_host(got->codes(), codes) == to_host(want.codes(), codes) &&
                      to_host(got->t_codes(), codes) == to_host(want.t_codes(), codes) &&
                      same_bits(to_host(got->scales(), want.scales_count()), to_host(want.scales(), want.scales_count())) &&
                      same_bits(to_host(got->t_scales(), want.t_scales_count()),
                                to_host(want.t_scales(), want.t_scales_count()));
    expect(same, tag + ": prepared " + p.name + " differs from its per-call quantisation");
  }
}

// prepare: (fp8) prepare_weights before the passes, and check the cache (check_prepared).
Tensors run_gpu(const Inputs& in, std::size_t core_budget, cu::Numerics num = cu::Numerics::exact,
                bool prepare = false) {
  cu::Stream stream;  // non-blocking: the layer must order everything on its own stream
  cu::Blas blas(stream.get());
  cu::LtFp8Gemm lt;
  cu::DeviceLinear lin(blas, lt, num);
  const DeviceTensors w(in.w);
  DeviceTensors grads(nn::mla_zero_weights<float>(in.c));
  auto x = to_device(flat(in.x));
  auto dy = to_device(flat(in.dy));
  const int M = static_cast<int>(in.x.rows());
  cu::DeviceBuffer<float> out(idx(M) * in.c.hidden);
  gputest::sync_device("uploads");  // they ran on the legacy stream

  cu::MlaDevice mla((in.c), blas, lin, core_budget);
  if (prepare) {
    mla.prepare_weights(w.weights());
    check_prepared("mla " + std::string(name(num)) + " prepared", in, w.weights(), mla, lin);
  }
  cu::MlaDeviceSaved s;
  cu::MlaDeviceInputGrad g;
  mla.forward(w.weights(), x.get(), M, static_cast<int>(in.seq_len), out.get(), &s);
  mla.backward_input(w.weights(), s, dy.get(), g);
  for (int rep = 0; rep < 2; ++rep) mla.backward_weight(s, g, dy.get(), grads.p);
  cu::check(cudaStreamSynchronize(stream.get()), "mla");

  Tensors t = state(out, s, g, [](const auto& b) { return to_host(b); });
  for_each_tensor(grads.shapes, grads.p, [&](const char* name, const auto& m, float* ptr) {
    if (m.size() > 0) t[std::string("grad.") + name] = to_host(ptr, idx(m.size()));
  });
  return t;
}

void compare_all(const std::string& tag, const Tensors& gpu, const Tensors& cpu, double tol = kTol) {
  std::printf("%s\n", tag.c_str());
  for (const auto& [name, want] : cpu) {
    const auto it = gpu.find(name);
    if (it == gpu.end()) {
      expect(false, tag + ": " + name + " missing on the device");
      continue;
    }
    compare(tag, name, it->second, want, tol);
  }
  for (const auto& [name, got] : gpu)
    expect(cpu.count(name) == 1, tag + ": " + name + " on the device but not on the CPU");
}

// Whether every tensor of `a` that `b` also has is bit-identical.
bool same_tensors(const Tensors& a, const Tensors& b, std::string* first_diff) {
  for (const auto& [name, v] : a) {
    const auto it = b.find(name);
    if (it == b.end()) continue;
    if (!same_bits(v, it->second)) {
      if (first_diff) *first_diff = name;
      return false;
    }
  }
  return true;
}

void check_mla() {
  const std::size_t budget = cu::MlaDevice::kDefaultCoreBudget;
  const Inputs a = make_inputs(tiny_moe(128), 2, 64, 1);
  const Tensors cpu_a = run_cpu(a);
  const Tensors gpu_a = run_gpu(a, budget);
  compare_all("mla tiny-moe 2x64", gpu_a, cpu_a);

  const Tensors gpu_a2 = run_gpu(a, budget);
  std::string diff;
  expect(same_tensors(gpu_a, gpu_a2, &diff) && gpu_a.size() == gpu_a2.size(),
         "mla determinism: two runs differ (first: " + diff + ")");

  Inputs k = a;
  k.c.recompute = false;
  const Tensors gpu_k = run_gpu(k, budget);
  compare_all("mla tiny-moe 2x64, recompute off", gpu_k, run_cpu(k));
  diff.clear();
  expect(same_tensors(gpu_k, gpu_a, &diff), "mla recompute off vs on: not bit-identical (first: " + diff + ")");

  // chunks of 5 (forward) / 3 (backward) pairs: straddle the two sequences' 4 heads each
  cu::AttentionShape cs;
  cs.rows = 128;
  cs.heads = 4;
  cs.nope = 32;
  cs.rope = 16;
  cs.dv = 32;
  cs.seq_len = 64;
  cs.scale = 1.0f;
  const std::size_t small = 3 * sizeof(float) * 64 * (4 * 48 + 3 * 32 + 2 * 64);
  expect(cu::attention_core_chunk(cs, small, false) == 5 && cu::attention_core_chunk(cs, small, true) == 3,
         "mla chunked: chunk sizes are not 5 / 3");
  const Tensors gpu_c = run_gpu(a, small);
  compare_all("mla tiny-moe 2x64, core chunks 5 / 3", gpu_c, cpu_a);
  std::printf("  chunked vs one batch: %s\n", same_tensors(gpu_c, gpu_a, nullptr) ? "bit-identical" : "differ");

  const Inputs q0 = make_inputs(tiny_moe(0), 2, 64, 2);
  compare_all("mla q_lora_rank 0, 2x64", run_gpu(q0, budget), run_cpu(q0));

  const Inputs s1 = make_inputs(tiny_moe(128), 3, 1, 3);
  compare_all("mla tiny-moe 3x1", run_gpu(s1, budget), run_cpu(s1));
}

// The projections in BF16 / FP8 (see the header for the tolerances).
void check_mla_low_precision(cu::Numerics num) {
  const std::size_t budget = cu::MlaDevice::kDefaultCoreBudget;
  const double tol = num == cu::Numerics::bf16 ? 2e-3 : 1e-2;
  const std::string nm = name(num);
  const Inputs a = make_inputs(tiny_moe(128), 2, 64, 1);
  const Inputs q0 = make_inputs(tiny_moe(0), 2, 64, 2);
  for (const Inputs* in : {&a, &q0}) {
    const std::string tag = "mla " + nm + (in == &a ? " tiny-moe 2x64" : " q_lora_rank 0, 2x64");
    const Tensors gpu = run_gpu(*in, budget, num);
    compare_all(tag, gpu, run_cpu(*in, num), tol);
    bool rounded = true;
    for (const char* t : {"out", "saved.q_a", "saved.kv_a"})
      for (float v : gpu.at(t)) rounded = rounded && is_bf16(v);
    expect(rounded, tag + ": out, saved.q_a and saved.kv_a are not all BF16 values (projection outputs rounded)");
    if (num == cu::Numerics::fp8) {
      const Tensors prepared = run_gpu(*in, budget, num, true);
      std::string diff;
      expect(same_tensors(prepared, gpu, &diff) && prepared.size() == gpu.size(),
             tag + ": prepared weights vs per-call quantisation not bit-identical (first: " + diff + ")");
    }
  }
}

}  // namespace

TANDEM_GPU_CHECK(attention) {
  check_rope();
  for (int nope : {32, 0})
    for (int chunk : {8, 3}) check_core(nope, chunk);
  check_mla();
  check_mla_low_precision(cu::Numerics::bf16);
  check_mla_low_precision(cu::Numerics::fp8);
}
