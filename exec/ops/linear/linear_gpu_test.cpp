// GPU checks of exec/backends/cuda/infra/blas.h and exec/ops/linear/linear_cuda.h (the harness is gpu_check.h):
//
//   blas    Blas::gemm in the four (trans_a, trans_b) combinations, non-square, with padded leading
//           dimensions (the padding of A and B holds 1e30, so reading it would show; C's padding
//           holds a sentinel that must survive; where beta = 0, C starts as NaN, which cuBLAS must
//           not read), two (alpha, beta) pairs; gemm_strided_batched (gaps between the matrices);
//           gemm_bf16. Each vs an FP64 host GEMM: rel-L2 <= 1e-6. Why: true FP32 (pedantic, no TF32)
//           dot products of K <= 200 terms carry a relative error ~ 2^-24 sqrt(K) / 2.5 (< 5e-7);
//           products of BF16 values are exact in FP32, so gemm_bf16 has the same bound against the
//           exact product of its BF16 inputs.
//   linear  DeviceLinear forward / backward_input / backward_weight (dW accumulated onto a random
//           dW0) vs exec/ops's linear_* with the same Numerics, at (M, K, N) = (256, 256, 512),
//           (130, 384, 128) and (70, 200, 100) (every FP8 dimension padded), and vs an FP64 GEMM of
//           what the numerics feeds the GEMM (the inputs; their BF16 roundings; the dequantised
//           exec/fp8 operands). Tolerances:
//             exact  rel-L2 <= 4 u sqrt(K + 1), u = 2^-24, K the reduction length, vs exec/ops and
//                    vs FP64: both are FP32 sums of the same products in different orders, each
//                    ~ u sqrt(K) / 2.5 from the exact value.
//             bf16   element-wise |gpu - cpu| <= 1 BF16 ulp + 4 (K + 1) u sum_k |a_k b_k|: the
//                    products are exact, two FP32 summation orders differ by at most the second
//                    term (2 gamma_K, doubled for truncating tensor-core adds), and the BF16
//                    rounding of two such values by at most one ulp; >= 90% bit-equal (an FP32
//                    difference ~1e-7 flips a BF16 rounding rarely); every rounded output is a
//                    BF16 value; vs FP64 rel-L2 <= 2^-8 (rounded outputs: half an ulp is 2^-9
//                    relative) or 4 u sqrt(K + 1) (the FP32 weight gradient).
//             fp8    the codes are bit-identical (gpu_quant), so only cuBLASLt's accumulation
//                    differs: rel-L2 <= 1e-3 vs exec/ops and <= 1e-2 vs FP64 of the dequantised
//                    operands (BF16 output rounding alone is ~1e-3); rounded outputs are BF16.
//           Also: accumulate = true into a strided destination (= the plain result added in FP32,
//           bit for bit in bf16 / fp8, whose GEMM calls are the same; padding untouched); fp8
//           quantize_weight's codes / scales / transpose bit-identical to exec/fp8 (padding codes
//           0) and results with the quantised weight bit-identical to quantising per call; empty
//           shapes (M = 0, K = 0 -> y = 0, N = 0 -> dx = 0).
//           Also: fp8 forward with the SM budget set (set_sm_count_target = SMs − 20) equals the
//           all-SM product within one BF16 ulp (rel-L2 4e-3); a negative budget is refused.
//   ffn     DeviceFfn forward / backward_input / backward_weight vs exec/ops's ffn_* (y, gate|up,
//           dx, d_gate|d_up, the recomputed SwiGLU output, the three weight gradients onto random
//           starting values) at (rows, hidden, inter) = (256, 256, 384), (130, 200, 100),
//           (128, 128, 256). rel-L2 vs exec/ops: exact 1e-5 (also vs exec/ops in FP64), bf16 2e-3,
//           fp8 1e-2. Why looser than a linear: SwiGLU uses CUDA's expf, and the second and third
//           GEMMs' inputs (SwiGLU output, its gradient) then differ from the CPU's in the last FP32
//           bit, or by a BF16 ulp where the first GEMM's rounding flipped; in fp8 that occasionally
//           moves an FP8 code by one step (2^-4 relative) or a tile's amax. fp8 with
//           quantize_weights == per-call quantisation bit for bit; a 0-row segment is a no-op.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/fp8/bf16.h"
#include "exec/fp8/quantize.h"
#include "exec/ops/linear/ffn.h"
#include "exec/ops/linear/linear.h"
#include "exec/ops/tensor.h"
#include "tests/exec/tensor_test_util.h"
#include "exec/ops/linear/linear_cuda_kernels.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

using tandem::idx;

namespace {

using tandem::gputest::make_input;

namespace cu = tandem::cuda;
namespace nn = tandem::nn;
namespace fp8 = tandem::fp8;
using tandem::exec_test::random_mat;
using tandem::gputest::expect;
using tandem::gputest::is_bf16;
using tandem::gputest::kAllNumerics;
using tandem::gputest::name;
using tandem::gputest::flat;
using tandem::gputest::gemm_abt64;
using tandem::gputest::sync_device;
using tandem::gputest::rel_l2;
using tandem::gputest::same_bits;
using tandem::gputest::to_device;
using tandem::gputest::to_host;

using MatF = nn::Mat<float>;
using Vec64 = std::vector<double>;

constexpr double kU = 0x1p-24;  // FP32 unit roundoff

std::size_t count_of(int rows, int cols) { return idx(rows) * idx(cols); }

cu::DeviceBuffer<float> upload(const MatF& m) { return to_device(flat(m)); }

// One BF16 ulp at the magnitude of v (8 significant bits).
double ulp_bf16(double v) {
  if (v == 0) return 0;
  int e = 0;
  std::frexp(std::fabs(v), &e);  // |v| in [2^(e-1), 2^e)
  return std::ldexp(1.0, e - 8);
}

// Non-blocking (cuda_check.h), so work launched on the wrong stream is not silently ordered.
using cu::Stream;

// ================================================================ blas

// A row-major matrix stored with `pad` extra columns (ld = cols + pad) holding `pad_value`.
struct Stored {
  int rows = 0, cols = 0, ld = 0;
  std::vector<float> v;
  float at(int r, int c) const { return v[idx(r) * ld + c]; }
};

Stored make_stored(int rows, int cols, int pad, uint64_t seed, float pad_value) {
  Stored s{rows, cols, cols + pad, {}};
  const MatF m = random_mat<float>(rows, cols, seed);
  s.v.assign(count_of(rows, s.ld), pad_value);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) s.v[idx(r) * s.ld + c] = m(r, c);
  return s;
}

// Sets the interior (not the padding) to NaN: an input the GEMM must not read.
void poison(Stored& s) {
  for (int r = 0; r < s.rows; ++r)
    for (int c = 0; c < s.cols; ++c) s.v[idx(r) * s.ld + c] = NAN;
}

// alpha·op(A)·op(B) + beta·C0 in FP64, [m, n] dense (beta == 0: C0 is not read).
Vec64 ref_gemm(bool ta, bool tb, int m, int n, int k, double alpha, const Stored& A, const Stored& B, double beta,
               const Stored& C0) {
  Vec64 out(count_of(m, n));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) {
        const double a = ta ? A.at(p, i) : A.at(i, p);
        const double b = tb ? B.at(j, p) : B.at(p, j);
        s += a * b;
      }
      out[idx(i) * n + j] = alpha * s + (beta != 0 ? beta * C0.at(i, j) : 0.0);
    }
  return out;
}

// The [m, n] interior of a stored result, and whether its padding still holds the initial bits.
std::vector<float> interior(const std::vector<float>& got, const Stored& c, int m, int n, bool* padding_kept) {
  std::vector<float> out(count_of(m, n));
  bool kept = true;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < c.ld; ++j) {
      const std::size_t q = idx(i) * c.ld + j;
      if (j < n) out[idx(i) * n + j] = got[q];
      else kept = kept && std::memcmp(&got[q], &c.v[q], sizeof(float)) == 0;
    }
  *padding_kept = kept;
  return out;
}

constexpr float kPadValue = 1e30f;
constexpr float kSentinel = -7.25f;

void check_blas_gemm(cu::Blas& blas, const Stream& st) {
  const int shapes[][3] = {{37, 53, 129}, {96, 130, 200}};
  const double ab[][2] = {{1.0, 0.0}, {0.75, -0.5}};
  uint64_t seed = 100;
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t)
      for (const auto& coef : ab) {
        const bool ta = t & 1, tb = t & 2;
        const int m = s[0], n = s[1], k = s[2];
        const Stored A = make_stored(ta ? k : m, ta ? m : k, 3, ++seed, kPadValue);
        const Stored B = make_stored(tb ? n : k, tb ? k : n, 5, ++seed, kPadValue);
        Stored C = make_stored(m, n, 7, ++seed, kSentinel);
        if (coef[1] == 0) poison(C);  // beta = 0: C need not hold anything valid
        const Vec64 ref = ref_gemm(ta, tb, m, n, k, coef[0], A, B, coef[1], C);
        auto dA = to_device(A.v), dB = to_device(B.v), dC = to_device(C.v);
        sync_device("blas upload");
        blas.gemm(ta, tb, m, n, k, static_cast<float>(coef[0]), dA.get(), A.ld, dB.get(), B.ld,
                  static_cast<float>(coef[1]), dC.get(), C.ld);
        st.sync("blas gemm");
        bool kept = false;
        const std::vector<float> got = interior(to_host(dC), C, m, n, &kept);
        const double e = rel_l2(got, ref);
        const std::string tag = "blas gemm " + std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) +
                                " trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb) +
                                " alpha=" + std::to_string(coef[0]) + " beta=" + std::to_string(coef[1]);
        std::printf("%s: rel-L2 vs FP64 %.2e\n", tag.c_str(), e);
        expect(e <= 1e-6, tag + ": rel-L2 vs FP64 <= 1e-6");
        expect(kept, tag + ": C's padding columns untouched");
      }
}

void check_blas_batched(cu::Blas& blas, const Stream& st) {
  const int m = 33, n = 47, k = 65, batch = 3;
  const float alpha = 1.0f, beta = 0.5f;
  uint64_t seed = 200;
  for (int t = 0; t < 4; ++t) {
    const bool ta = t & 1, tb = t & 2;
    std::vector<Stored> A, B, C;
    for (int i = 0; i < batch; ++i) {
      A.push_back(make_stored(ta ? k : m, ta ? m : k, 2, ++seed, kPadValue));
      B.push_back(make_stored(tb ? n : k, tb ? k : n, 4, ++seed, kPadValue));
      C.push_back(make_stored(m, n, 3, ++seed, kSentinel));
    }
    // Matrix i starts at i·stride, the stride leaving a gap of 11 elements (kPadValue / kSentinel).
    auto pack = [](const std::vector<Stored>& ms, float gap_value, long long* stride) {
      *stride = static_cast<long long>(ms[0].v.size()) + 11;
      std::vector<float> all(idx(*stride) * ms.size(), gap_value);
      for (std::size_t i = 0; i < ms.size(); ++i)
        std::copy(ms[i].v.begin(), ms[i].v.end(), all.begin() + static_cast<std::ptrdiff_t>(i * *stride));
      return all;
    };
    long long sa = 0, sb = 0, sc = 0;
    const std::vector<float> ha = pack(A, kPadValue, &sa), hb = pack(B, kPadValue, &sb), hc = pack(C, kSentinel, &sc);
    auto dA = to_device(ha), dB = to_device(hb), dC = to_device(hc);
    sync_device("batched upload");
    blas.gemm_strided_batched(ta, tb, m, n, k, alpha, dA.get(), A[0].ld, sa, dB.get(), B[0].ld, sb, beta, dC.get(),
                              C[0].ld, sc, batch);
    st.sync("gemm_strided_batched");
    const std::vector<float> got_all = to_host(dC);
    const std::string tag = "blas gemm_strided_batched trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb);
    double worst = 0;
    bool kept_all = true;
    for (int i = 0; i < batch; ++i) {
      const std::vector<float> got_i(got_all.begin() + static_cast<std::ptrdiff_t>(i * sc),
                                     got_all.begin() + static_cast<std::ptrdiff_t>(i * sc + C[i].v.size()));
      bool kept = false;
      const std::vector<float> got = interior(got_i, C[i], m, n, &kept);
      worst = std::max(worst, rel_l2(got, ref_gemm(ta, tb, m, n, k, alpha, A[i], B[i], beta, C[i])));
      kept_all = kept_all && kept;
      for (long long g = static_cast<long long>(C[i].v.size()); g < sc; ++g)  // the gap after matrix i
        kept_all = kept_all && got_all[idx(i * sc + g)] == kSentinel;
    }
    std::printf("%s: worst rel-L2 vs FP64 over %d matrices %.2e\n", tag.c_str(), batch, worst);
    expect(worst <= 1e-6, tag + ": rel-L2 vs FP64 <= 1e-6");
    expect(kept_all, tag + ": padding and gaps of C untouched");
  }
}

// Stored BF16 bit patterns of a random matrix (padding: the BF16 of kPadValue), and its values.
struct StoredBf16 {
  Stored values;                // decoded, for the reference
  std::vector<uint16_t> bits;   // what the GPU gets
};
StoredBf16 make_bf16(int rows, int cols, int pad, uint64_t seed) {
  StoredBf16 s{make_stored(rows, cols, pad, seed, kPadValue), {}};
  s.bits.resize(s.values.v.size());
  for (std::size_t i = 0; i < s.bits.size(); ++i) {
    s.bits[i] = fp8::float_to_bf16(s.values.v[i]);
    s.values.v[i] = fp8::bf16_to_float(s.bits[i]);
  }
  return s;
}

void check_blas_bf16(cu::Blas& blas, const Stream& st) {
  const int shapes[][3] = {{45, 70, 96}, {64, 32, 160}};
  const double ab[][2] = {{1.0, 0.0}, {0.5, 1.0}};
  uint64_t seed = 300;
  for (const auto& s : shapes)
    for (int t = 0; t < 4; ++t)
      for (const auto& coef : ab) {
        const bool ta = t & 1, tb = t & 2;
        const int m = s[0], n = s[1], k = s[2];
        const StoredBf16 A = make_bf16(ta ? k : m, ta ? m : k, 3, ++seed);
        const StoredBf16 B = make_bf16(tb ? n : k, tb ? k : n, 1, ++seed);
        Stored C = make_stored(m, n, 2, ++seed, kSentinel);
        if (coef[1] == 0) poison(C);
        const Vec64 ref = ref_gemm(ta, tb, m, n, k, coef[0], A.values, B.values, coef[1], C);
        auto dA = to_device(A.bits), dB = to_device(B.bits);
        auto dC = to_device(C.v);
        sync_device("bf16 upload");
        blas.gemm_bf16(ta, tb, m, n, k, static_cast<float>(coef[0]), dA.get(), A.values.ld, dB.get(), B.values.ld,
                       static_cast<float>(coef[1]), dC.get(), C.ld);
        st.sync("gemm_bf16");
        bool kept = false;
        const std::vector<float> got = interior(to_host(dC), C, m, n, &kept);
        const double e = rel_l2(got, ref);
        const std::string tag = "blas gemm_bf16 " + std::to_string(m) + "x" + std::to_string(n) + "x" +
                                std::to_string(k) + " trans_a=" + std::to_string(ta) + " trans_b=" +
                                std::to_string(tb) + " beta=" + std::to_string(coef[1]);
        std::printf("%s: rel-L2 vs FP64 of the BF16 inputs %.2e\n", tag.c_str(), e);
        expect(e <= 1e-6, tag + ": rel-L2 vs FP64 <= 1e-6");
        expect(kept, tag + ": C's padding columns untouched");
      }
}

// ================================================================ linear

// Row-major FP64 copies of what a numerics feeds its GEMMs.
Vec64 to64(const MatF& m) { return Vec64(m.data(), m.data() + m.size()); }
Vec64 to64(const std::vector<float>& v) { return Vec64(v.begin(), v.end()); }
Vec64 to64_t(const MatF& m) {
  const MatF t = m.transpose();
  return to64(t);
}
Vec64 bf16_of(Vec64 v) {
  for (double& d : v) d = fp8::round_to_bf16(static_cast<float>(d));
  return v;
}

double exact_tol(int kred) { return 4 * kU * std::sqrt(kred + 1.0); }

// got vs exec/ops (cpu) and vs FP64 (ref) with the numerics' tolerance; kred = reduction length;
// rounded = the output is rounded to BF16 (forward, backward_input in bf16 / fp8).
void compare(const std::string& tag, cu::Numerics num, const std::vector<float>& got,
             const std::vector<float>& cpu, const tandem::gputest::Gemm64& ref, int kred, bool rounded) {
  const double e_cpu = rel_l2(got, cpu), e_ref = rel_l2(got, ref.v);
  const bool rounding_applies = rounded && num != cu::Numerics::exact;
  bool all_bf16 = true;
  for (float v : got) all_bf16 = all_bf16 && is_bf16(v);
  switch (num) {
    case cu::Numerics::exact: {
      const double tol = exact_tol(kred);
      std::printf("%s: rel-L2 vs exec/ops %.2e, vs FP64 %.2e (tol %.1e)\n", tag.c_str(), e_cpu, e_ref, tol);
      expect(e_cpu <= tol, tag + ": rel-L2 vs exec/ops");
      expect(e_ref <= tol, tag + ": rel-L2 vs FP64");
      break;
    }
    case cu::Numerics::bf16: {
      std::size_t bad = 0, equal = 0;
      double worst = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = got[i], c = cpu[i], d = std::fabs(g - c);
        const double bound = (rounded ? ulp_bf16(std::max(std::fabs(g), std::fabs(c))) : 0.0) +
                             4.0 * (kred + 1) * kU * ref.abs[i];
        if (d > bound) ++bad;
        if (std::memcmp(&got[i], &cpu[i], sizeof(float)) == 0) ++equal;
        if (bound > 0) worst = std::max(worst, d / bound);
      }
      const double frac = got.empty() ? 1.0 : static_cast<double>(equal) / static_cast<double>(got.size());
      const double tol_ref = rounded ? 0x1p-8 : exact_tol(kred);
      std::printf("%s: %.2f%% bit-equal to exec/ops, worst |diff|/bound %.2f, rel-L2 vs exec/ops %.2e, vs FP64 %.2e\n",
                  tag.c_str(), 100 * frac, worst, e_cpu, e_ref);
      expect(bad == 0, tag + ": " + std::to_string(bad) + " elements beyond 1 BF16 ulp + the FP32 reordering bound");
      if (rounded) expect(frac >= 0.9, tag + ": at least 90% bit-equal to exec/ops");
      expect(e_ref <= tol_ref, tag + ": rel-L2 vs FP64 of the BF16 inputs");
      break;
    }
    case cu::Numerics::fp8:
      std::printf("%s: rel-L2 vs exec/ops %.2e, vs FP64 of the dequantised operands %.2e\n", tag.c_str(), e_cpu, e_ref);
      expect(e_cpu <= 1e-3, tag + ": rel-L2 vs exec/ops <= 1e-3");
      expect(e_ref <= 1e-2, tag + ": rel-L2 vs FP64 <= 1e-2");
      break;
  }
  if (rounding_applies) expect(all_bf16, tag + ": every output is a BF16 value");
}

// The quantised weight vs exec/fp8: codes of the real region, zero padding, scales, transpose.
void check_fp8_weight(const std::string& tag, const cu::Fp8Weight& q, const MatF& W) {
  const int N = static_cast<int>(W.rows()), K = static_cast<int>(W.cols());
  const fp8::BlockFp8 cb = fp8::quantize_blocks(W.data(), N, K);
  const fp8::BlockFp8 ct = fp8::transpose(cb);
  const int np = q.padded_rows(), kp = q.padded_cols();
  expect(q.rows() == N && q.cols() == K && np == cu::fp8_padded(N) && kp == cu::fp8_padded(K),
         tag + ": Fp8Weight dimensions");
  const std::vector<uint8_t> codes = to_host(q.codes(), count_of(np, kp));
  const std::vector<uint8_t> t_codes = to_host(q.t_codes(), count_of(kp, np));
  bool codes_ok = true, t_ok = true;
  for (int r = 0; r < np; ++r)
    for (int c = 0; c < kp; ++c) {
      const uint8_t want = (r < N && c < K) ? cb.data[idx(r) * K + c] : 0;
      codes_ok = codes_ok && codes[idx(r) * kp + c] == want;
      const uint8_t want_t = (r < N && c < K) ? ct.data[idx(c) * N + r] : 0;
      t_ok = t_ok && t_codes[idx(c) * np + r] == want_t;
    }
  expect(codes_ok, tag + ": quantised W codes == exec/fp8 (padding 0)");
  expect(t_ok, tag + ": transposed codes == exec/fp8 transpose (padding 0)");
  expect(q.scales_count() == cb.scales.size() && same_bits(to_host(q.scales(), q.scales_count()), cb.scales),
         tag + ": W scales bit-identical to exec/fp8 (same layout and size)");
  expect(q.t_scales_count() == ct.scales.size() && same_bits(to_host(q.t_scales(), q.t_scales_count()), ct.scales),
         tag + ": Wᵀ scales bit-identical to exec/fp8 transpose");
}

void check_linear_case(cu::Blas& blas, cu::LtFp8Gemm& lt, const Stream& st, int M, int K, int N,
                       cu::Numerics num) {
  const std::string tag = std::string("linear ") + name(num) + " M=" + std::to_string(M) + " K=" + std::to_string(K) +
                          " N=" + std::to_string(N);
  const nn::Numerics nnum = num;
  const uint64_t seed = 1000u + static_cast<uint64_t>(M) * 7 + static_cast<uint64_t>(K) * 3 + static_cast<uint64_t>(N);
  const MatF x = random_mat<float>(M, K, seed), W = random_mat<float>(N, K, seed + 1, 0.05);
  const MatF dy = random_mat<float>(M, N, seed + 2), dW0 = random_mat<float>(N, K, seed + 3, 0.1);

  // exec/ops
  const MatF y_c = nn::linear_forward(x, W, nnum);
  const MatF dx_c = nn::linear_backward_input(dy, W, nnum);
  MatF dW_c = dW0;
  nn::linear_backward_weight(dy, x, nnum, dW_c);

  // FP64 of what each GEMM consumes: fprop x·Wᵀ, dgrad dy·(Wᵀ)ᵀ, wgrad dyᵀ·(xᵀ)ᵀ.
  Vec64 fa, fb, da, db, wa, wb;
  switch (num) {
    case cu::Numerics::exact:
      fa = to64(x), fb = to64(W), da = to64(dy), db = to64_t(W), wa = to64_t(dy), wb = to64_t(x);
      break;
    case cu::Numerics::bf16:
      fa = bf16_of(to64(x)), fb = bf16_of(to64(W)), da = bf16_of(to64(dy)), db = bf16_of(to64_t(W));
      wa = bf16_of(to64_t(dy)), wb = bf16_of(to64_t(x));
      break;
    case cu::Numerics::fp8: {
      const fp8::BlockFp8 wq = fp8::quantize_blocks(W.data(), N, K);
      fa = to64(fp8::dequantize(fp8::quantize_rowwise(x.data(), M, K))), fb = to64(fp8::dequantize(wq));
      da = to64(fp8::dequantize(fp8::quantize_rowwise(dy.data(), M, N))), db = to64(fp8::dequantize(fp8::transpose(wq)));
      wa = to64(fp8::dequantize(fp8::quantize_columnwise(dy.data(), M, N)));
      wb = to64(fp8::dequantize(fp8::quantize_columnwise(x.data(), M, K)));
      break;
    }
  }
  const auto ry = gemm_abt64(fa, fb, M, N, K), rdx = gemm_abt64(da, db, M, K, N);
  const auto rdw = gemm_abt64(wa, wb, N, K, M, dW0.data());

  auto gx = upload(x), gW = upload(W), gdy = upload(dy), gdW = upload(dW0);
  cu::DeviceBuffer<float> gy(count_of(M, N)), gdx(count_of(M, K));
  sync_device("linear upload");
  cu::DeviceLinear lin(blas, lt, num);
  const cu::ConstDeviceMat Wm(gW.get(), N, K), xm(gx.get(), M, K), dym(gdy.get(), M, N);
  lin.forward(xm, Wm, cu::DeviceMat(gy.get(), M, N));
  lin.backward_input(dym, Wm, cu::DeviceMat(gdx.get(), M, K));
  lin.backward_weight(dym, xm, cu::DeviceMat(gdW.get(), N, K));
  st.sync("linear");
  const std::vector<float> y = to_host(gy), dx = to_host(gdx), dW = to_host(gdW);
  compare(tag + " forward", num, y, flat(y_c), ry, K, true);
  compare(tag + " backward_input", num, dx, flat(dx_c), rdx, N, true);
  compare(tag + " backward_weight", num, dW, flat(dW_c), rdw, M, false);

  // accumulate = true into strided destinations: = y0 + (the plain result), FP32 add.
  {
    const int pad = 4;
    const MatF y0 = random_mat<float>(M, N, seed + 4), dx0 = random_mat<float>(M, K, seed + 5);
    std::vector<float> hy(count_of(M, N + pad), kSentinel), hdx(count_of(M, K + pad), kSentinel);
    for (int r = 0; r < M; ++r) {
      for (int c = 0; c < N; ++c) hy[idx(r) * (N + pad) + c] = y0(r, c);
      for (int c = 0; c < K; ++c) hdx[idx(r) * (K + pad) + c] = dx0(r, c);
    }
    auto gy2 = to_device(hy), gdx2 = to_device(hdx);
    sync_device("accumulate upload");
    lin.forward(xm, Wm, cu::DeviceMat(gy2.get(), M, N, N + pad), true);
    lin.backward_input(dym, Wm, cu::DeviceMat(gdx2.get(), M, K, K + pad), true);
    st.sync("linear accumulate");
    auto check_acc = [&](const std::string& what, const std::vector<float>& got_all, const MatF& start,
                         const std::vector<float>& plain, int rows, int cols, int kred) {
      std::vector<float> got(count_of(rows, cols)), want(count_of(rows, cols));
      bool kept = true;
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols + pad; ++c) {
          const float v = got_all[idx(r) * (cols + pad) + c];
          if (c >= cols) {
            kept = kept && v == kSentinel;
            continue;
          }
          got[idx(r) * cols + c] = v;
          want[idx(r) * cols + c] = start(r, c) + plain[idx(r) * cols + c];
        }
      const std::string t = tag + " " + what + " accumulate (strided)";
      expect(kept, t + ": padding columns untouched");
      if (num == cu::Numerics::exact) {
        const double e = rel_l2(got, want);
        expect(e <= exact_tol(kred), t + ": rel-L2 vs start + plain result " + std::to_string(e));
      } else {
        expect(same_bits(got, want), t + ": == start + plain result, bit for bit");
      }
    };
    check_acc("forward", to_host(gy2), y0, y, M, N, K);
    check_acc("backward_input", to_host(gdx2), dx0, dx, M, K, N);
  }

  // fp8: the weight quantised once == quantised per call.
  if (num == cu::Numerics::fp8) {
    cu::Fp8Weight q;
    lin.quantize_weight(Wm, q);
    cu::DeviceBuffer<float> gyq(count_of(M, N)), gdxq(count_of(M, K));
    lin.forward(xm, cu::LinearWeight(q), cu::DeviceMat(gyq.get(), M, N));
    lin.backward_input(dym, cu::LinearWeight(Wm, &q), cu::DeviceMat(gdxq.get(), M, K));
    st.sync("linear quantised weight");
    check_fp8_weight(tag, q, W);
    expect(same_bits(to_host(gyq), y), tag + ": forward with quantize_weight == per-call quantisation");
    expect(same_bits(to_host(gdxq), dx), tag + ": backward_input with quantize_weight == per-call quantisation");
  }
}

// Empty shapes: M = 0 does nothing; K = 0 gives y = 0 (kept when accumulating); N = 0 gives dx = 0.
void check_linear_empty(cu::Blas& blas, cu::LtFp8Gemm& lt, const Stream& st, cu::Numerics num) {
  const std::string tag = std::string("linear ") + name(num) + " empty";
  cu::DeviceLinear lin(blas, lt, num);
  const MatF W = random_mat<float>(128, 128, 7), dW0 = random_mat<float>(128, 128, 8);
  auto gW = upload(W), gdW = upload(dW0);
  std::vector<float> ones(64 * 32, 1.0f);
  auto gy = to_device(ones), gy_acc = to_device(ones), gdx = to_device(ones);
  sync_device("empty upload");
  const cu::ConstDeviceMat Wm(gW.get(), 128, 128);
  // M = 0
  lin.forward(cu::ConstDeviceMat(nullptr, 0, 128), Wm, cu::DeviceMat(nullptr, 0, 128));
  lin.backward_input(cu::ConstDeviceMat(nullptr, 0, 128), Wm, cu::DeviceMat(nullptr, 0, 128));
  lin.backward_weight(cu::ConstDeviceMat(nullptr, 0, 128), cu::ConstDeviceMat(nullptr, 0, 128),
                      cu::DeviceMat(gdW.get(), 128, 128));
  // K = 0: y [64, 32] = x [64, 0] · W [32, 0]ᵀ
  lin.forward(cu::ConstDeviceMat(nullptr, 64, 0), cu::ConstDeviceMat(nullptr, 32, 0), cu::DeviceMat(gy.get(), 64, 32));
  lin.forward(cu::ConstDeviceMat(nullptr, 64, 0), cu::ConstDeviceMat(nullptr, 32, 0),
              cu::DeviceMat(gy_acc.get(), 64, 32), true);
  lin.backward_weight(cu::ConstDeviceMat(gy_acc.get(), 64, 32), cu::ConstDeviceMat(nullptr, 64, 0),
                      cu::DeviceMat(nullptr, 32, 0));
  // N = 0: dx [64, 32] = dy [64, 0] · W [0, 32]
  lin.backward_input(cu::ConstDeviceMat(nullptr, 64, 0), cu::ConstDeviceMat(nullptr, 0, 32),
                     cu::DeviceMat(gdx.get(), 64, 32));
  st.sync("linear empty");
  expect(same_bits(to_host(gdW), flat(dW0)), tag + ": M = 0 leaves dW unchanged");
  expect(to_host(gy) == std::vector<float>(64 * 32, 0.0f), tag + ": K = 0 gives y = 0");
  expect(to_host(gy_acc) == ones, tag + ": K = 0 with accumulate leaves y");
  expect(to_host(gdx) == std::vector<float>(64 * 32, 0.0f), tag + ": N = 0 gives dx = 0");
}

// The FP8 GEMMs' SM budget (set_sm_count_target: SMs − the scenario's comm SMs, as the CUDA
// executor sets it): the same product up to FP32 accumulation order (cuBLASLt may pick another
// algorithm for fewer SMs), seen through fp8's BF16-rounded outputs — an order difference can
// move an element by one BF16 ulp (2^-8 relative), so rel-L2 <= 4e-3 bounds even every element
// moving; whether it is bit-identical is printed. A negative budget is refused.
void check_linear_sm_budget(cu::Blas& blas, cu::LtFp8Gemm& lt, const Stream& st) {
  const int M = 512, K = 1024, N = 768;
  cudaDeviceProp prop{};
  cu::check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  const int budget = std::max(1, prop.multiProcessorCount - 20);
  const MatF x = random_mat<float>(M, K, 31), W = random_mat<float>(N, K, 32);
  auto gx = upload(x), gW = upload(W);
  cu::DeviceBuffer<float> all(idx(M) * N), fewer(idx(M) * N);
  cu::DeviceLinear full(blas, lt, cu::Numerics::fp8), limited(blas, lt, cu::Numerics::fp8);
  limited.set_sm_count_target(budget);
  expect(limited.sm_count_target() == budget, "linear fp8 SM budget: the target is kept");
  const cu::ConstDeviceMat xm(gx.get(), M, K), Wm(gW.get(), N, K);
  full.forward(xm, Wm, cu::DeviceMat(all.get(), M, N));
  limited.forward(xm, Wm, cu::DeviceMat(fewer.get(), M, N));
  st.sync("linear sm budget");
  const std::vector<float> a = to_host(all), b = to_host(fewer);
  const double e = rel_l2(b, a);
  std::printf("  linear fp8 with %d of %d SMs: rel-L2 %.3g vs all SMs (%s)\n", budget, prop.multiProcessorCount, e,
              same_bits(a, b) ? "bit-identical" : "not bit-identical");
  expect(e <= 4e-3, "linear fp8 SM budget: same product within one BF16 ulp (rel-L2 4e-3)");
  bool refused = false;
  try {
    limited.set_sm_count_target(-1);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  expect(refused, "linear SM budget: a negative target is refused");
}

// ================================================================ ffn

// [rows, 2·inter] = a | b (a, b [rows, inter]).
std::vector<float> side_by_side(const MatF& a, const MatF& b) {
  const int rows = static_cast<int>(a.rows()), w = static_cast<int>(a.cols());
  std::vector<float> out(count_of(rows, 2 * w));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < w; ++c) {
      out[idx(r) * 2 * w + c] = a(r, c);
      out[idx(r) * 2 * w + w + c] = b(r, c);
    }
  return out;
}

void check_ffn_case(cu::Blas& blas, cu::LtFp8Gemm& lt, const Stream& st, int rows, int H, int I,
                    cu::Numerics num) {
  const std::string tag = std::string("ffn ") + name(num) + " rows=" + std::to_string(rows) + " hidden=" +
                          std::to_string(H) + " inter=" + std::to_string(I);
  const nn::Numerics nnum = num;
  const uint64_t seed = 5000u + static_cast<uint64_t>(rows) * 11 + static_cast<uint64_t>(H) * 5 + static_cast<uint64_t>(I);
  nn::FfnWeights<float> w;
  w.gate = random_mat<float>(I, H, seed, 1.0 / std::sqrt(H));
  w.up = random_mat<float>(I, H, seed + 1, 1.0 / std::sqrt(H));
  w.down = random_mat<float>(H, I, seed + 2, 1.0 / std::sqrt(I));
  const MatF x = random_mat<float>(rows, H, seed + 3), dy = random_mat<float>(rows, H, seed + 4);
  nn::FfnWeights<float> g0;
  g0.gate = random_mat<float>(I, H, seed + 5, 0.1);
  g0.up = random_mat<float>(I, H, seed + 6, 0.1);
  g0.down = random_mat<float>(H, I, seed + 7, 0.1);

  // exec/ops
  nn::FfnSaved<float> sv;
  const MatF y_c = nn::ffn_forward(w, x, nnum, &sv);
  const nn::FfnInputGrad<float> gi = nn::ffn_backward_input(w, sv, dy, nnum);
  nn::FfnWeights<float> gc = g0;
  nn::ffn_backward_weight(sv, gi, dy, nnum, gc);

  // GPU
  auto dgate = upload(w.gate), dup = upload(w.up), ddown = upload(w.down), dx_in = upload(x), ddy = upload(dy);
  cu::DeviceBuffer<float> gy(count_of(rows, H)), gdx(count_of(rows, H));
  auto ggate = upload(g0.gate), gup = upload(g0.up), gdown = upload(g0.down);
  sync_device("ffn upload");
  cu::DeviceLinear lin(blas, lt, num);
  cu::DeviceFfn ffn(lin, H, I);
  cu::DeviceFfnWeights dw;
  dw.gate = dgate.get();
  dw.up = dup.get();
  dw.down = ddown.get();
  cu::DeviceFfnSaved dsv;
  cu::DeviceFfnInputGrad dg;
  ffn.forward(dw, dx_in.get(), rows, gy.get(), &dsv);
  ffn.backward_input(dw, dsv, ddy.get(), gdx.get(), dg);
  ffn.backward_weight(dsv, dg, ddy.get(), {ggate.get(), gup.get(), gdown.get()});
  st.sync("ffn");
  const std::vector<float> y = to_host(gy), dx = to_host(gdx);
  const std::vector<float> gate_up = to_host(dsv.gate_up, count_of(rows, 2 * I));
  const std::vector<float> d_gate_up = to_host(dg.d_gate_up, count_of(rows, 2 * I));
  const std::vector<float> swiglu_out = to_host(dg.swiglu_out, count_of(rows, I));
  const std::vector<float> dgate_w = to_host(ggate), dup_w = to_host(gup), ddown_w = to_host(gdown);

  const double tol = num == cu::Numerics::exact ? 1e-5 : num == cu::Numerics::bf16 ? 2e-3 : 1e-2;
  struct Item {
    const char* what;
    const std::vector<float>* got;
    std::vector<float> want;
  };
  const Item items[] = {{"y", &y, flat(y_c)},
                        {"gate|up", &gate_up, side_by_side(sv.gate_out, sv.up_out)},
                        {"dx", &dx, flat(gi.dx)},
                        {"d_gate|d_up", &d_gate_up, side_by_side(gi.d_gate_out, gi.d_up_out)},
                        {"swiglu_out", &swiglu_out, flat(gi.swiglu_out)},
                        {"grad gate", &dgate_w, flat(gc.gate)},
                        {"grad up", &dup_w, flat(gc.up)},
                        {"grad down", &ddown_w, flat(gc.down)}};
  std::printf("%s: rel-L2 vs exec/ops (tol %.0e):", tag.c_str(), tol);
  for (const Item& it : items) {
    const double e = rel_l2(*it.got, it.want);
    std::printf(" %s %.2e", it.what, e);
    expect(e <= tol, tag + ": " + it.what + " rel-L2 vs exec/ops");
  }
  std::printf("\n");
  if (num != cu::Numerics::exact) {
    bool rounded = true;
    for (float v : y) rounded = rounded && is_bf16(v);
    for (float v : gate_up) rounded = rounded && is_bf16(v);
    expect(rounded, tag + ": y and gate|up are BF16 values (GEMM outputs rounded)");
  }

  if (num == cu::Numerics::exact) {  // also against the FP64 FFN
    nn::FfnWeights<double> w64{w.gate.cast<double>(), w.up.cast<double>(), w.down.cast<double>()};
    nn::FfnSaved<double> sv64;
    const nn::Mat<double> x64 = x.cast<double>(), dy64 = dy.cast<double>();
    const nn::Mat<double> y64 = nn::ffn_forward(w64, x64, nn::Numerics::exact, &sv64);
    const nn::FfnInputGrad<double> gi64 = nn::ffn_backward_input(w64, sv64, dy64, nn::Numerics::exact);
    nn::FfnWeights<double> gc64{g0.gate.cast<double>(), g0.up.cast<double>(), g0.down.cast<double>()};
    nn::ffn_backward_weight(sv64, gi64, dy64, nn::Numerics::exact, gc64);
    auto v64 = [](const nn::Mat<double>& m) { return Vec64(m.data(), m.data() + m.size()); };
    const double e[] = {rel_l2(y, v64(y64)), rel_l2(dx, v64(gi64.dx)), rel_l2(dgate_w, v64(gc64.gate)),
                        rel_l2(dup_w, v64(gc64.up)), rel_l2(ddown_w, v64(gc64.down))};
    std::printf("%s: rel-L2 vs exec/ops FP64: y %.2e dx %.2e grad gate %.2e up %.2e down %.2e\n", tag.c_str(), e[0],
                e[1], e[2], e[3], e[4]);
    for (double v : e) expect(v <= 1e-5, tag + ": rel-L2 vs the FP64 FFN <= 1e-5");
  }

  if (num == cu::Numerics::fp8) {  // weights quantised once == quantised per call
    cu::DeviceFfnFp8Weights qw;
    ffn.quantize_weights(dw, qw);
    cu::DeviceFfnWeights dwq = dw;
    dwq.fp8 = &qw;
    auto ggate2 = upload(g0.gate), gup2 = upload(g0.up), gdown2 = upload(g0.down);
    cu::DeviceBuffer<float> gy2(count_of(rows, H)), gdx2(count_of(rows, H));
    sync_device("ffn fp8 upload");
    cu::DeviceFfnSaved dsv2;
    cu::DeviceFfnInputGrad dg2;
    ffn.forward(dwq, dx_in.get(), rows, gy2.get(), &dsv2);
    ffn.backward_input(dwq, dsv2, ddy.get(), gdx2.get(), dg2);
    ffn.backward_weight(dsv2, dg2, ddy.get(), {ggate2.get(), gup2.get(), gdown2.get()});
    st.sync("ffn fp8 quantised weights");
    expect(same_bits(to_host(gy2), y) && same_bits(to_host(gdx2), dx) && same_bits(to_host(ggate2), dgate_w) &&
               same_bits(to_host(gup2), dup_w) && same_bits(to_host(gdown2), ddown_w),
           tag + ": quantize_weights == per-call quantisation, bit for bit");
  }

  // A routed expert with an empty segment: nothing happens.
  {
    cu::DeviceFfnSaved s0;
    cu::DeviceFfnInputGrad g0d;
    ffn.forward(dw, nullptr, 0, nullptr, &s0);
    ffn.backward_input(dw, s0, nullptr, nullptr, g0d);
    ffn.backward_weight(s0, g0d, nullptr, {ggate.get(), gup.get(), gdown.get()});
    st.sync("ffn empty");
    expect(same_bits(to_host(ggate), dgate_w) && same_bits(to_host(gdown), ddown_w),
           tag + ": a 0-row segment leaves the gradients unchanged");
  }
}


// The SwiGLU kernels (linear_cuda_kernels.h) vs FP64: forward and backward on a fused gate|up matrix.
void check_swiglu() {
  const int rows = 37, width = 300;
  const std::vector<float> gu = make_input(rows, 2 * width, 0, 5), dout = make_input(rows, width, 0, 6);
  auto dgu_in = to_device(gu), ddout = to_device(dout);
  cu::DeviceBuffer<float> h(idx(rows) * width), dgu(gu.size());
  cu::swiglu_forward(dgu_in.get(), rows, width, h.get(), nullptr);
  cu::swiglu_backward(dgu_in.get(), ddout.get(), rows, width, dgu.get(), nullptr);
  const std::vector<float> gh = to_host(h, h.size()), gd = to_host(dgu, dgu.size());
  double worst = 0;
  for (int r = 0; r < rows; ++r)
    for (int j = 0; j < width; ++j) {
      const double g = gu[idx(r) * 2 * width + j], u = gu[idx(r) * 2 * width + width + j];
      const double sig = 1.0 / (1.0 + std::exp(-g)), silu = g * sig, ds = sig * (1 + g * (1 - sig));
      const double d = dout[idx(r) * width + j];
      const double want[3] = {silu * u, d * u * ds, d * silu};
      const double got[3] = {gh[idx(r) * width + j], gd[idx(r) * 2 * width + j],
                             gd[idx(r) * 2 * width + width + j]};
      for (int q = 0; q < 3; ++q) worst = std::max(worst, std::fabs(got[q] - want[q]) / (std::fabs(want[q]) + 1e-6));
    }
  std::printf("swiglu: worst relative error %.2e\n", worst);
  expect(worst < 1e-5, "swiglu forward/backward vs FP64");
}

}  // namespace

TANDEM_GPU_CHECK(blas) {
  Stream st;
  cu::Blas blas(st.get());
  check_blas_gemm(blas, st);
  check_blas_batched(blas, st);
  check_blas_bf16(blas, st);
}

TANDEM_GPU_CHECK(linear) {
  Stream st;
  cu::Blas blas(st.get());
  cu::LtFp8Gemm lt;
  const int shapes[][3] = {{256, 256, 512}, {130, 384, 128}, {70, 200, 100}};  // (M, K, N)
  for (cu::Numerics num : kAllNumerics) {
    for (const auto& s : shapes) check_linear_case(blas, lt, st, s[0], s[1], s[2], num);
    check_linear_empty(blas, lt, st, num);
  }
  check_linear_sm_budget(blas, lt, st);
}

TANDEM_GPU_CHECK(ffn) {
  Stream st;
  cu::Blas blas(st.get());
  cu::LtFp8Gemm lt;
  const int shapes[][3] = {{256, 256, 384}, {130, 200, 100}, {128, 128, 256}};  // (rows, hidden, inter)
  for (cu::Numerics num : kAllNumerics)
    for (const auto& s : shapes) check_ffn_case(blas, lt, st, s[0], s[1], s[2], num);
}

TANDEM_GPU_CHECK(swiglu) { check_swiglu(); }
