// GPU checks of the model's last device pieces against the CPU reference, in the same Numerics:
//
//   head     DeviceHead (exec/cuda/head.h) vs exec/nn/head.h + exec/nn/loss.h: logits, the
//            cross-entropy loss (forward_loss, targets with ignored rows), dlogits, the saved
//            state, backward-input (dh, the recomputed norm output, d_normed) and backward-weight
//            (d_norm, d_proj added onto random starting values: the increments are compared, so +=
//            is checked) at tiny-moe's hidden 256 with vocab 1000 (not a multiple of 128) and 130
//            rows, in exact, bf16 and fp8; the fp8 run must equal the bf16 run BIT FOR BIT (the
//            head never runs in FP8, as exec/nn), and an empty micro-batch gives loss 0.
//   mtp      DeviceMtpProj (exec/cuda/mtp.h) vs exec/nn/mtp.h: h', cat, d_cat, d_emb, dh and the
//            three weight gradients (increments onto random starting values), hidden 256, 130 rows,
//            exact / bf16 / fp8; fp8 with a pre-quantised eh_proj is bit-identical to per-call.
//   balance  balance_loss_forward / _backward (exec/cuda/balance.h) vs exec/moe/balance.h <float>,
//            BIT FOR BIT (f, P, per-sequence losses, the loss, d_scores): random routings where one
//            expert is never chosen, tiny-moe's E = 16, K = 4 with 1 and 3 sequences of 64 tokens,
//            E = 256, K = 8 with 2 sequences of 300 (token chunks straddle the forward's block),
//            E = 72, K = 6 with 5 sequences of 37, and E = 1024, K = 8 (the largest block); and
//            0 tokens (loss 0).
// Tolerances (rel-L2 vs exec/nn in the same numerics; the denominator is the CPU tensor's norm):
//   exact  1e-5: cuBLAS (pedantic FP32) sums the GEMMs (K = 256 .. 1000, and 130 rows for the
//          weight gradients) in another order than the CPU's loops (~2^-24·sqrt(K) ≈ 2e-6), and the
//          RMSNorm's sum of squares is a tree; the cross-entropy is within 1e-11 (nn_ops.h).
//   bf16   2e-3: the GEMM inputs' BF16 roundings are the CPU's bit for bit where those inputs agree,
//          and BF16 products are exact, so a GEMM alone differs only by its summation order; but the
//          norm outputs entering them differ from the CPU's in the last FP32 bit here and there, which
//          flips a BF16 rounding (2^-8 relative) now and then; a few such flips among thousands of
//          elements give rel-L2 ~1e-3 at most (the same bound as tests/gpu/linear_test.cpp's ffn).
//   fp8    mtp: 1e-2 (linear_test's ffn bound): the FP8 codes are the CPU's where the inputs agree,
//          cuBLASLt accumulates in its own order (~1e-4), and a last-bit difference of the norm
//          output occasionally moves an E4M3 code (2^-4 relative) or a tile's amax. head: the same
//          2e-3 as bf16 (it IS the bf16 path) and bit-identical to the device's bf16 run.
//   balance  bitwise: the device performs the CPU's float operations in the CPU's order (balance.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/cuda/balance.h"
#include "exec/cuda/blas.h"
#include "exec/cuda/cuda_check.h"
#include "exec/cuda/head.h"
#include "exec/cuda/linear.h"
#include "exec/cuda/lt_gemm.h"
#include "exec/cuda/mtp.h"
#include "exec/moe/balance.h"
#include "exec/moe/router.h"
#include "exec/nn/head.h"
#include "exec/nn/loss.h"
#include "exec/nn/mtp.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;
namespace nn = tandem::nn;
using gputest::expect;
using gputest::name;
using gputest::to_nn;
using gputest::kAllNumerics;
using gputest::flat;
using gputest::same_bits;
using gputest::to_device;
using gputest::to_host;

// tiny-moe (models/tiny-moe.yaml): hidden 256, rms_norm_eps 1e-6; the vocab is not tiny-moe's 1024
// but 1000, so the head's N is not a multiple of 128.
constexpr int kHidden = 256;
constexpr int kVocab = 1000;
constexpr int kRows = 130;
constexpr double kEps = 1e-6;

// Tolerances (see the header).
double tol_head(cu::Numerics n) { return n == cu::Numerics::exact ? 1e-5 : 2e-3; }
double tol_mtp(cu::Numerics n) {
  return n == cu::Numerics::exact ? 1e-5 : n == cu::Numerics::bf16 ? 2e-3 : 1e-2;
}

void compare(const std::string& tag, const std::string& what, const std::vector<double>& got,
             const std::vector<double>& want, double tol) {
  if (got.size() != want.size()) {
    expect(false, tag + ": " + what + " has " + std::to_string(got.size()) + " elements, want " +
                      std::to_string(want.size()));
    return;
  }
  const double e = gputest::rel_l2(got, want);
  std::printf("  %-10s %-10s rel-L2 %.2e\n", tag.c_str(), what.c_str(), e);
  char buf[64];
  std::snprintf(buf, sizeof buf, " rel-L2 %.3e > %.0e", e, tol);
  expect(e <= tol, tag + ": " + what + buf);
}
std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
void compare(const std::string& tag, const std::string& what, const std::vector<float>& got,
             const std::vector<float>& want, double tol) {
  compare(tag, what, to_double(got), to_double(want), tol);
}
// got − start vs want − start in FP64: an accumulated gradient's increment.
void compare_increment(const std::string& tag, const std::string& what, const std::vector<float>& got,
                       const std::vector<float>& want, const std::vector<float>& start, double tol) {
  std::vector<double> g(got.size()), w(want.size());
  for (std::size_t i = 0; i < got.size() && i < start.size(); ++i)
    g[i] = static_cast<double>(got[i]) - static_cast<double>(start[i]);
  for (std::size_t i = 0; i < want.size() && i < start.size(); ++i)
    w[i] = static_cast<double>(want[i]) - static_cast<double>(start[i]);
  compare(tag, what, g, w, tol);
}

nn::Vec<float> norm_weight(int n, uint64_t seed) {
  const nn::Mat<float> r = exec_test::random_mat<float>(n, 1, seed, 0.1);
  nn::Vec<float> v(n);
  for (int i = 0; i < n; ++i) v(i) = 1.0f + r(i, 0);
  return v;
}

nn::Vec<float> small_vec(int n, uint64_t seed, double scale) {
  const nn::Mat<float> r = exec_test::random_mat<float>(n, 1, seed, scale);
  nn::Vec<float> v(n);
  for (int i = 0; i < n; ++i) v(i) = r(i, 0);
  return v;
}

// ---------------------------------------------------------------- head

// Everything a device head run produces, downloaded.
struct HeadRun {
  std::vector<float> logits, dlogits, saved_h, dh, normed, d_normed, d_norm, d_proj;
  double loss = 0;
};

HeadRun run_head(cu::Blas& blas, cu::LtFp8Gemm& lt, const cu::Stream& st, cu::Numerics num,
                 const nn::Vec<float>& norm, const nn::Mat<float>& proj, const nn::Mat<float>& h,
                 const std::vector<int32_t>& targets, double scale, const std::vector<float>& d_norm0,
                 const std::vector<float>& d_proj0) {
  const int rows = static_cast<int>(h.rows());
  auto d_norm_w = to_device(flat(norm));
  auto d_proj_w = to_device(flat(proj));
  auto d_h = to_device(flat(h));
  auto d_targets = to_device(targets);
  auto d_dnorm = to_device(d_norm0);
  auto d_dproj = to_device(d_proj0);
  cu::DeviceBuffer<float> logits(idx(rows) * kVocab), dlogits(idx(rows) * kVocab);
  cu::DeviceBuffer<double> loss(1);
  gputest::sync_device("head: uploads");

  cu::DeviceHead head(blas, lt, num, kHidden, kVocab, kEps);
  expect(head.numerics() == cu::head_numerics(num), "head: DeviceHead runs in head_numerics(run)");
  cu::DeviceHeadSaved saved;
  cu::DeviceHeadInputGrad g;
  head.forward_loss(d_norm_w.get(), d_proj_w.get(), d_h.get(), rows, d_targets.get(), scale, dlogits.get(),
                    loss.get(), logits.get(), &saved);
  head.backward_input(d_norm_w.get(), d_proj_w.get(), saved, dlogits.get(), g);
  head.backward_weight(saved, g, dlogits.get(), d_dnorm.get(), d_dproj.get());
  st.sync("head");

  const std::size_t n = idx(rows) * kHidden;
  HeadRun r;
  r.logits = to_host(logits);
  r.dlogits = to_host(dlogits);
  r.loss = to_host(loss)[0];
  r.saved_h = to_host(saved.h.get(), n);
  r.dh = to_host(g.dh.get(), n);
  r.normed = to_host(g.normed.get(), n);
  r.d_normed = to_host(g.d_normed.get(), n);
  r.d_norm = to_host(d_dnorm);
  r.d_proj = to_host(d_dproj);
  return r;
}

void check_head_empty(cu::Blas& blas, cu::LtFp8Gemm& lt, const cu::Stream& st) {
  cu::DeviceHead head(blas, lt, cu::Numerics::bf16, kHidden, kVocab, kEps);
  cu::DeviceBuffer<double> loss(1);
  const std::vector<double> nan = {std::nan("")};
  loss.upload(nan.data(), 1);
  gputest::sync_device("head empty: upload");
  cu::DeviceHeadSaved saved;
  cu::DeviceHeadInputGrad g;
  head.forward_loss(nullptr, nullptr, nullptr, 0, nullptr, 1.0, nullptr, loss.get(), nullptr, &saved);
  head.backward_input(nullptr, nullptr, saved, nullptr, g);
  head.backward_weight(saved, g, nullptr, nullptr, nullptr);
  st.sync("head empty");
  expect(to_host(loss)[0] == 0.0, "head empty: loss of 0 rows is not 0");
  expect(saved.rows == 0 && g.rows == 0, "head empty: rows not 0");
}

// ---------------------------------------------------------------- mtp

struct MtpRun {
  std::vector<float> out, cat, d_cat, d_emb, dh, g_hnorm, g_enorm, g_eh_proj;
};

MtpRun run_mtp(cu::Blas& blas, cu::LtFp8Gemm& lt, const cu::Stream& st, cu::Numerics num,
               const nn::MtpProjWeights<float>& w, const nn::Mat<float>& h, const nn::Mat<float>& emb,
               const nn::Mat<float>& dy, const nn::MtpProjWeights<float>& g0, bool prepared) {
  const int rows = static_cast<int>(h.rows());
  auto d_hnorm = to_device(flat(w.hnorm));
  auto d_enorm = to_device(flat(w.enorm));
  auto d_eh = to_device(flat(w.eh_proj));
  auto d_h = to_device(flat(h));
  auto d_emb_in = to_device(flat(emb));
  auto d_dy = to_device(flat(dy));
  auto g_hnorm = to_device(flat(g0.hnorm));
  auto g_enorm = to_device(flat(g0.enorm));
  auto g_eh = to_device(flat(g0.eh_proj));
  cu::DeviceBuffer<float> out(idx(rows) * kHidden);
  gputest::sync_device("mtp: uploads");

  cu::DeviceLinear lin(blas, lt, num);
  cu::DeviceMtpProj mtp(lin, kHidden, kEps);
  cu::Fp8Weight q;
  cu::DeviceMtpWeights dw;
  dw.hnorm = d_hnorm.get();
  dw.enorm = d_enorm.get();
  dw.eh_proj = d_eh.get();
  if (prepared) {
    lin.quantize_weight(cu::ConstDeviceMat(d_eh.get(), kHidden, 2 * kHidden), q);
    dw.eh_proj_fp8 = &q;
  }
  cu::DeviceMtpSaved saved;
  cu::DeviceMtpInputGrad g;
  mtp.forward(dw, d_h.get(), d_emb_in.get(), rows, out.get(), &saved);
  mtp.backward_input(dw, saved, d_dy.get(), g);
  mtp.backward_weight(saved, g, d_dy.get(), cu::DeviceMtpGrads{g_hnorm.get(), g_enorm.get(), g_eh.get()});
  st.sync("mtp");

  const std::size_t n = idx(rows) * kHidden;
  MtpRun r;
  r.out = to_host(out);
  r.cat = to_host(g.cat.get(), 2 * n);
  r.d_cat = to_host(g.d_cat.get(), 2 * n);
  r.d_emb = to_host(g.d_emb.get(), n);
  r.dh = to_host(g.dh.get(), n);
  r.g_hnorm = to_host(g_hnorm);
  r.g_enorm = to_host(g_enorm);
  r.g_eh_proj = to_host(g_eh);
  expect(same_bits(to_host(saved.h.get(), n), flat(h)) && same_bits(to_host(saved.emb.get(), n), flat(emb)),
         "mtp: saved h / emb are not copies of the inputs");
  return r;
}

// ---------------------------------------------------------------- balance

// A routing of `tokens` tokens, K distinct experts each out of E, never `never` (-1: any).
moe::Routing random_routing(int tokens, int E, int K, int never, uint64_t seed) {
  std::mt19937_64 rng(seed);
  moe::Routing r;
  r.tokens = tokens;
  r.top_k = K;
  r.expert.reserve(idx(tokens) * K);
  std::vector<int32_t> pool;
  for (int e = 0; e < E; ++e)
    if (e != never) pool.push_back(e);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);  // the first K are the token's experts
    for (int j = 0; j < K; ++j) r.expert.push_back(pool[idx(j)]);
  }
  return r;
}

// Sigmoid-like scores in (0, 1).
nn::Mat<float> random_scores(int tokens, int E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.01, 0.99);
  nn::Mat<float> s(tokens, E);
  for (int64_t i = 0; i < s.size(); ++i) s.data()[i] = static_cast<float>(u(rng));
  return s;
}

void check_balance_case(const cu::Stream& st, int E, int K, int seq_len, int sequences, double alpha, float d_loss,
                        uint64_t seed) {
  const std::string tag = "balance E " + std::to_string(E) + " K " + std::to_string(K) + " seq " +
                          std::to_string(seq_len) + " x " + std::to_string(sequences);
  const int tokens = seq_len * sequences;
  const int never = E / 3;
  const moe::Routing routing = random_routing(tokens, E, K, never, seed);
  const nn::Mat<float> scores = random_scores(tokens, E, seed + 1);
  const moe::BalanceLoss<float> want = moe::balance_loss_forward<float>(routing, scores, seq_len, alpha);
  const nn::Mat<float> want_ds = moe::balance_loss_backward<float>(want, scores, seq_len, alpha, d_loss);

  auto d_scores = to_device(flat(scores));
  auto d_expert = to_device(routing.expert);
  cu::DeviceBuffer<float> f(idx(sequences) * E), P(idx(sequences) * E),
      per_seq(idx(sequences)), loss(1), ds(idx(tokens) * E);
  gputest::sync_device("balance: uploads");
  cu::balance_loss_forward(d_scores.get(), d_expert.get(), tokens, E, K, seq_len, alpha, f.get(), P.get(),
                           per_seq.get(), loss.get(), st.get());
  cu::balance_loss_backward(f.get(), d_scores.get(), tokens, E, seq_len, alpha, d_loss, ds.get(), st.get());
  st.sync("balance");

  const std::vector<float> got_f = to_host(f), got_P = to_host(P), got_ds = to_host(ds);
  expect(same_bits(got_f, flat(want.f)), tag + ": f differs from exec/moe");
  expect(same_bits(got_P, flat(want.P)), tag + ": P differs from exec/moe");
  expect(same_bits(to_host(per_seq), want.per_sequence), tag + ": per-sequence losses differ from exec/moe");
  expect(same_bits(to_host(loss), std::vector<float>{want.loss}), tag + ": loss differs from exec/moe");
  expect(same_bits(got_ds, flat(want_ds)), tag + ": d_scores differ from exec/moe");
  bool unused_zero = true;  // the never-chosen expert: f = 0 in every sequence
  for (int q = 0; q < sequences; ++q) unused_zero = unused_zero && got_f[idx(q) * E + never] == 0.0f;
  expect(unused_zero, tag + ": the never-chosen expert has f != 0");
  std::printf("%s: loss %.9g (cpu %.9g), d_scores rel-L2 %.2e\n", tag.c_str(), static_cast<double>(to_host(loss)[0]),
              static_cast<double>(want.loss), gputest::rel_l2(got_ds, flat(want_ds)));
}

}  // namespace

TANDEM_GPU_CHECK(head) {
  cu::Stream st;
  cu::Blas blas(st.get());
  cu::LtFp8Gemm lt;
  const nn::Vec<float> norm = norm_weight(kHidden, 1);
  const nn::Mat<float> proj = exec_test::random_mat<float>(kVocab, kHidden, 2, 0.05);
  const nn::Mat<float> h = exec_test::random_mat<float>(kRows, kHidden, 3);
  std::vector<int32_t> targets(kRows);
  std::mt19937_64 rng(4);
  for (int i = 0; i < kRows; ++i) targets[idx(i)] = i % 17 == 5 ? -1 : static_cast<int32_t>(rng() % kVocab);
  // 1 / tokens (the executor's 1 / global tokens at one micro-batch). The accumulators start at
  // values below the increments (d_proj ~1e-4, d_norm ~1e-3), so rounding the sum to the start's
  // ulp does not swamp the increment's relative error.
  const double scale = 1.0 / kRows;
  const std::vector<float> d_norm0 = flat(exec_test::random_mat<float>(kHidden, 1, 5, 1e-4));
  const std::vector<float> d_proj0 = flat(exec_test::random_mat<float>(kVocab, kHidden, 6, 1e-5));

  HeadRun bf16_run;
  for (cu::Numerics num : kAllNumerics) {
    const std::string tag = std::string("head ") + name(num);
    const nn::Numerics n = to_nn(num);
    nn::HeadSaved<float> saved;
    const nn::Mat<float> logits = nn::head_forward<float>(norm, proj, h, kEps, n, &saved);
    const nn::CrossEntropy<float> ce = nn::cross_entropy<float>(logits, targets, scale);
    const nn::HeadInputGrad<float> g = nn::head_backward_input<float>(norm, proj, saved, ce.dlogits, kEps, n);
    nn::Vec<float> d_norm(kHidden);
    nn::Mat<float> d_proj(kVocab, kHidden);
    std::copy(d_norm0.begin(), d_norm0.end(), d_norm.data());
    std::copy(d_proj0.begin(), d_proj0.end(), d_proj.data());
    nn::head_backward_weight<float>(saved, g, ce.dlogits, kEps, n, d_norm, d_proj);

    const HeadRun r = run_head(blas, lt, st, num, norm, proj, h, targets, scale, d_norm0, d_proj0);
    const double tol = tol_head(num);
    compare(tag, "logits", r.logits, flat(logits), tol);
    const double loss_err = std::fabs(r.loss - ce.loss) / std::fabs(ce.loss);
    std::printf("  %-10s %-10s rel %.2e (%.12g vs %.12g)\n", tag.c_str(), "loss", loss_err, r.loss, ce.loss);
    expect(loss_err <= tol, tag + ": loss relative error " + std::to_string(loss_err));
    compare(tag, "dlogits", r.dlogits, flat(ce.dlogits), tol);
    expect(same_bits(r.saved_h, flat(h)), tag + ": saved h is not a copy of h");
    compare(tag, "normed", r.normed, flat(g.normed), tol);
    compare(tag, "d_normed", r.d_normed, flat(g.d_normed), tol);
    compare(tag, "dh", r.dh, flat(g.dh), tol);
    compare_increment(tag, "d_norm", r.d_norm, flat(d_norm), d_norm0, tol);
    compare_increment(tag, "d_proj", r.d_proj, flat(d_proj), d_proj0, tol);
    if (num == cu::Numerics::bf16) bf16_run = r;
    if (num == cu::Numerics::fp8) {
      const bool same = same_bits(r.logits, bf16_run.logits) && same_bits(r.dlogits, bf16_run.dlogits) &&
                        r.loss == bf16_run.loss && same_bits(r.dh, bf16_run.dh) &&
                        same_bits(r.d_normed, bf16_run.d_normed) && same_bits(r.d_norm, bf16_run.d_norm) &&
                        same_bits(r.d_proj, bf16_run.d_proj);
      expect(same, "head fp8: differs from the bf16 run (the head must never run in FP8)");
    }
  }
  check_head_empty(blas, lt, st);
}

TANDEM_GPU_CHECK(mtp) {
  cu::Stream st;
  cu::Blas blas(st.get());
  cu::LtFp8Gemm lt;
  nn::MtpProjWeights<float> w;
  w.hnorm = norm_weight(kHidden, 11);
  w.enorm = norm_weight(kHidden, 12);
  w.eh_proj = exec_test::random_mat<float>(kHidden, 2 * kHidden, 13, 0.05);
  const nn::Mat<float> h = exec_test::random_mat<float>(kRows, kHidden, 14);
  const nn::Mat<float> emb = exec_test::random_mat<float>(kRows, kHidden, 15, 0.02);  // embedding-sized values
  const nn::Mat<float> dy = exec_test::random_mat<float>(kRows, kHidden, 16, 0.01);
  // Starting values of the accumulators, below the increments (norms ~1e-1, eh_proj ~1e-1).
  nn::MtpProjWeights<float> g0;
  g0.hnorm = small_vec(kHidden, 17, 1e-3);
  g0.enorm = small_vec(kHidden, 18, 1e-3);
  g0.eh_proj = exec_test::random_mat<float>(kHidden, 2 * kHidden, 19, 1e-3);

  for (cu::Numerics num : kAllNumerics) {
    const std::string tag = std::string("mtp ") + name(num);
    const nn::Numerics n = to_nn(num);
    nn::MtpSaved<float> saved;
    const nn::Mat<float> out = nn::mtp_input_forward<float>(w, h, emb, kEps, n, &saved);
    const nn::MtpInputGrad<float> g = nn::mtp_input_backward_input<float>(w, saved, dy, kEps, n);
    nn::MtpProjWeights<float> grads = g0;
    nn::mtp_input_backward_weight<float>(saved, g, dy, kEps, n, grads);

    const MtpRun r = run_mtp(blas, lt, st, num, w, h, emb, dy, g0, false);
    const double tol = tol_mtp(num);
    compare(tag, "h'", r.out, flat(out), tol);
    compare(tag, "cat", r.cat, flat(g.cat), tol);
    compare(tag, "d_cat", r.d_cat, flat(g.d_cat), tol);
    compare(tag, "d_emb", r.d_emb, flat(g.d_emb), tol);
    compare(tag, "dh", r.dh, flat(g.dh), tol);
    compare_increment(tag, "hnorm", r.g_hnorm, flat(grads.hnorm), flat(g0.hnorm), tol);
    compare_increment(tag, "enorm", r.g_enorm, flat(grads.enorm), flat(g0.enorm), tol);
    compare_increment(tag, "eh_proj", r.g_eh_proj, flat(grads.eh_proj), flat(g0.eh_proj), tol);
    if (num == cu::Numerics::fp8) {
      const MtpRun p = run_mtp(blas, lt, st, num, w, h, emb, dy, g0, true);
      const bool same = same_bits(p.out, r.out) && same_bits(p.d_cat, r.d_cat) && same_bits(p.d_emb, r.d_emb) &&
                        same_bits(p.dh, r.dh) && same_bits(p.g_hnorm, r.g_hnorm) &&
                        same_bits(p.g_enorm, r.g_enorm) && same_bits(p.g_eh_proj, r.g_eh_proj);
      expect(same, "mtp fp8: a pre-quantised eh_proj differs from per-call quantisation");
    }
  }
}

TANDEM_GPU_CHECK(balance) {
  cu::Stream st;
  // tiny-moe: E 16, K 4; 1 and 3 sequences of 64.
  check_balance_case(st, 16, 4, 64, 1, 1e-4, 1.0f, 31);
  check_balance_case(st, 16, 4, 64, 3, 1e-4, 0.125f, 32);
  // DeepSeek-V3's E and K; 300-token sequences straddle the forward's 256-token chunks.
  check_balance_case(st, 256, 8, 300, 2, 1e-3, 0.37f, 33);
  // E not a multiple of 32, short odd sequences.
  check_balance_case(st, 72, 6, 37, 5, 0.01, 1.0f / 3.0f, 34);
  // The largest block (1024 threads).
  check_balance_case(st, 1024, 8, 40, 2, 1e-4, 1.0f, 35);
  // 0 tokens: loss 0, nothing else written.
  cu::DeviceBuffer<float> loss(1);
  const std::vector<float> nan = {std::nanf("")};
  loss.upload(nan.data(), 1);
  gputest::sync_device("balance empty: upload");
  cu::balance_loss_forward(nullptr, nullptr, 0, 16, 4, 64, 1e-4, nullptr, nullptr, nullptr, loss.get(), st.get());
  cu::balance_loss_backward(nullptr, nullptr, 0, 16, 64, 1e-4, 1.0f, nullptr, st.get());
  st.sync("balance empty");
  expect(to_host(loss)[0] == 0.0f, "balance empty: the loss of 0 tokens is not 0");
}
