// The GPU half of the MTP test, against the CPU half in the same Numerics:
//
//   mtp      DeviceMtpProj (exec/ops/mtp/mtp_cuda.h) vs exec/ops/mtp/mtp.h: h', cat, d_cat, d_emb, dh and the
//            three weight gradients (increments onto random starting values), hidden 256, 130 rows,
//            exact / bf16 / fp8; fp8 with a pre-quantised eh_proj is bit-identical to per-call.
// Tolerances (rel-L2 vs exec/ops in the same numerics; the denominator is the CPU tensor's norm):
//   exact  1e-5: cuBLAS (pedantic FP32) sums the GEMMs (K = 256 and 512, and 130 rows for the
//          weight gradients) in another order than the CPU's loops (~2^-24·sqrt(K) ≈ 2e-6), and the
//          RMSNorm's sum of squares is a tree.
//   bf16   2e-3: the GEMM inputs' BF16 roundings are the CPU's bit for bit where those inputs agree,
//          and BF16 products are exact, so a GEMM alone differs only by its summation order; but the
//          norm outputs entering them differ from the CPU's in the last FP32 bit here and there, which
//          flips a BF16 rounding (2^-8 relative) now and then; a few such flips among thousands of
//          elements give rel-L2 ~1e-3 at most (the same bound as exec/ops/linear/linear_gpu_test.cpp's ffn).
//   fp8    1e-2 (linear_gpu_test's ffn bound): the FP8 codes are the CPU's where the inputs agree,
//          cuBLASLt accumulates in its own order (~1e-4), and a last-bit difference of the norm
//          output occasionally moves an E4M3 code (2^-4 relative) or a tile's amax.

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
#include "exec/ops/linear/linear_cuda.h"
#include "exec/ops/mtp/mtp.h"
#include "exec/ops/mtp/mtp_cuda.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/compare_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;
namespace nn = tandem::nn;
using namespace gputest;  // the checks' helpers: gpu_check.h, compare_util.h, numerics_util.h

// tiny-moe (models/tiny-moe.yaml): hidden 256, rms_norm_eps 1e-6.
constexpr int kHidden = 256;
constexpr int kRows = 130;
constexpr double kEps = 1e-6;

// Tolerances (see the header).
double tol_mtp(cu::Numerics n) {
  return n == cu::Numerics::exact ? 1e-5 : n == cu::Numerics::bf16 ? 2e-3 : 1e-2;
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

}  // namespace

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
    const nn::Numerics n = num;
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
