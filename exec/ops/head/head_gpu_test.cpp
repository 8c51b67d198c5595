// The GPU half of the head test, against the CPU half in the same Numerics:
//
//   head     DeviceHead (exec/ops/head/head_cuda.h) vs exec/ops/head/head.h + exec/ops/embedding/loss.h: logits, the
//            cross-entropy loss (forward_loss, targets with ignored rows), dlogits, the saved
//            state, backward-input (dh, the recomputed norm output, d_normed) and backward-weight
//            (d_norm, d_proj added onto random starting values: the increments are compared, so +=
//            is checked) at tiny-moe's hidden 256 with vocab 1000 (not a multiple of 128) and 130
//            rows, in exact, bf16 and fp8; the fp8 run must equal the bf16 run BIT FOR BIT (the
//            head never runs in FP8, as exec/ops), and an empty micro-batch gives loss 0.
// Tolerances (rel-L2 vs exec/ops in the same numerics; the denominator is the CPU tensor's norm):
//   exact  1e-5: cuBLAS (pedantic FP32) sums the GEMMs (K = 256 .. 1000, and 130 rows for the
//          weight gradients) in another order than the CPU's loops (~2^-24·sqrt(K) ≈ 2e-6), and the
//          RMSNorm's sum of squares is a tree; the cross-entropy is within 1e-11 (loss_cuda.h).
//   bf16   2e-3: the GEMM inputs' BF16 roundings are the CPU's bit for bit where those inputs agree,
//          and BF16 products are exact, so a GEMM alone differs only by its summation order; but the
//          norm outputs entering them differ from the CPU's in the last FP32 bit here and there, which
//          flips a BF16 rounding (2^-8 relative) now and then; a few such flips among thousands of
//          elements give rel-L2 ~1e-3 at most (the same bound as exec/ops/linear/linear_gpu_test.cpp's ffn).
//   fp8    mtp: 1e-2 (linear_gpu_test's ffn bound): the FP8 codes are the CPU's where the inputs agree,
//          cuBLASLt accumulates in its own order (~1e-4), and a last-bit difference of the norm
//          output occasionally moves an E4M3 code (2^-4 relative) or a tile's amax. head: the same
//          2e-3 as bf16 (it IS the bf16 path) and bit-identical to the device's bf16 run.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/ops/embedding/loss.h"
#include "exec/ops/head/head.h"
#include "exec/ops/head/head_cuda.h"
#include "exec/ops/linear/linear_cuda.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/compare_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;
namespace nn = tandem::nn;
using namespace gputest;  // the checks' helpers: gpu_check.h, compare_util.h, numerics_util.h

// tiny-moe (models/tiny-moe.yaml): hidden 256, rms_norm_eps 1e-6; the vocab is not tiny-moe's 1024
// but 1000, so the head's N is not a multiple of 128.
constexpr int kHidden = 256;
constexpr int kVocab = 1000;
constexpr int kRows = 130;
constexpr double kEps = 1e-6;

// Tolerances (see the header).
double tol_head(cu::Numerics n) { return n == cu::Numerics::exact ? 1e-5 : 2e-3; }

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
    const nn::Numerics n = num;
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
