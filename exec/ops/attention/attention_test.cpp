#include <catch2/catch.hpp>

#include "exec/ops/attention/attention.h"
#include "exec/ops/linear/linear.h"
#include "exec/ops/rmsnorm/rmsnorm.h"
#include "tests/exec/nn_test_util.h"

using namespace tandem::nn;
using namespace tandem::nn::test;

namespace {

MlaConfig small_config(int64_t q_lora) {
  MlaConfig c;
  c.hidden = 24;
  c.heads = 2;
  c.q_lora_rank = q_lora;
  c.kv_lora_rank = 10;
  c.qk_nope = 6;
  c.qk_rope = 4;
  c.v_head = 5;
  c.rms_eps = 1e-6;
  return c;
}

MlaWeights<double> random_weights(const MlaConfig& c, uint64_t seed, double s = 0.4) {
  MlaWeights<double> w = mla_zero_weights<double>(c);
  uint64_t k = seed;
  auto fill = [&](auto& m, double scale) {
    m = random_mat(m.rows(), m.cols(), ++k, scale);
  };
  if (c.q_lora_rank > 0) {
    fill(w.q_a_proj, s);
    w.q_a_layernorm = Vec<double>(random_mat(c.q_lora_rank, 1, ++k, 0.2).array() + 1.0);
    fill(w.q_b_proj, s);
  } else {
    fill(w.q_proj, s);
  }
  fill(w.kv_a_proj_with_mqa, s);
  w.kv_a_layernorm = Vec<double>(random_mat(c.kv_lora_rank, 1, ++k, 0.2).array() + 1.0);
  fill(w.kv_b_proj, s);
  fill(w.o_proj, s);
  return w;
}

MlaWeights<float> to_float(const MlaWeights<double>& w) {
  MlaWeights<float> f;
  f.q_a_proj = w.q_a_proj.cast<float>();
  f.q_a_layernorm = w.q_a_layernorm.cast<float>();
  f.q_b_proj = w.q_b_proj.cast<float>();
  f.q_proj = w.q_proj.cast<float>();
  f.kv_a_proj_with_mqa = w.kv_a_proj_with_mqa.cast<float>();
  f.kv_a_layernorm = w.kv_a_layernorm.cast<float>();
  f.kv_b_proj = w.kv_b_proj.cast<float>();
  f.o_proj = w.o_proj.cast<float>();
  return f;
}

// HF's apply_rotary_pos_emb on one vector: de-interleave, then x·cos + rotate_half(x)·sin.
std::vector<double> hf_rope(const std::vector<double>& in, double pos, double theta) {
  const size_t d = in.size(), h = d / 2;
  std::vector<double> x(d), out(d);
  for (size_t i = 0; i < h; ++i) {
    x[i] = in[2 * i];
    x[i + h] = in[2 * i + 1];
  }
  for (size_t j = 0; j < d; ++j) {
    const double f = 1.0 / std::pow(theta, static_cast<double>(2 * (j % h)) / static_cast<double>(d));
    const double rot = j < h ? -x[j + h] : x[j - h];
    out[j] = x[j] * std::cos(pos * f) + rot * std::sin(pos * f);
  }
  return out;
}

// An independent MLA forward in double with Eigen (full score matrices, explicit mask).
Mat<double> reference_mla(const MlaConfig& c, const MlaWeights<double>& w, const Mat<double>& x,
                          int64_t S) {
  auto lin = [](const Mat<double>& a, const Mat<double>& W) { return Mat<double>(a * W.transpose()); };
  auto norm = [&](const Mat<double>& a, const Vec<double>& g) {
    Mat<double> r(a.rows(), a.cols());
    for (int64_t i = 0; i < a.rows(); ++i)
      r.row(i) = a.row(i).cwiseProduct(g.transpose()) /
                 std::sqrt(a.row(i).squaredNorm() / static_cast<double>(a.cols()) + c.rms_eps);
    return r;
  };
  const Mat<double> q = c.q_lora_rank > 0 ? lin(norm(lin(x, w.q_a_proj), w.q_a_layernorm), w.q_b_proj)
                                          : lin(x, w.q_proj);
  const Mat<double> kva = lin(x, w.kv_a_proj_with_mqa);
  const Mat<double> kv = lin(norm(kva.leftCols(c.kv_lora_rank), w.kv_a_layernorm), w.kv_b_proj);
  const int64_t M = x.rows(), qk = c.qk_head(), dkv = c.qk_nope + c.v_head;
  Mat<double> attn = Mat<double>::Zero(M, c.heads * c.v_head);
  for (int64_t b = 0; b < M / S; ++b) {
    for (int64_t h = 0; h < c.heads; ++h) {
      Mat<double> Q(S, qk), K(S, qk), V(S, c.v_head);
      for (int64_t i = 0; i < S; ++i) {
        const int64_t r = b * S + i;
        std::vector<double> qpe(c.qk_rope), kpe(c.qk_rope);
        for (int64_t d = 0; d < c.qk_rope; ++d) {
          qpe[d] = q(r, h * qk + c.qk_nope + d);
          kpe[d] = kva(r, c.kv_lora_rank + d);
        }
        qpe = hf_rope(qpe, static_cast<double>(i), c.rope_theta);
        kpe = hf_rope(kpe, static_cast<double>(i), c.rope_theta);
        for (int64_t d = 0; d < c.qk_nope; ++d) {
          Q(i, d) = q(r, h * qk + d);
          K(i, d) = kv(r, h * dkv + d);
        }
        for (int64_t d = 0; d < c.qk_rope; ++d) {
          Q(i, c.qk_nope + d) = qpe[d];
          K(i, c.qk_nope + d) = kpe[d];
        }
        for (int64_t d = 0; d < c.v_head; ++d) V(i, d) = kv(r, h * dkv + c.qk_nope + d);
      }
      Mat<double> P = Q * K.transpose() * c.softmax_scale();
      for (int64_t i = 0; i < S; ++i) {
        for (int64_t j = i + 1; j < S; ++j) P(i, j) = -INFINITY;
        const double mx = P.row(i).maxCoeff();
        P.row(i) = (P.row(i).array() - mx).exp();
        P.row(i) /= P.row(i).sum();
      }
      const Mat<double> O = P * V;
      for (int64_t i = 0; i < S; ++i) attn.block(b * S + i, h * c.v_head, 1, c.v_head) = O.row(i);
    }
  }
  return lin(attn, w.o_proj);
}

}  // namespace

TEST_CASE("mla: RoPE is HF DeepSeek-V3's (interleaved in, rotate-half out)", "[nn][mla]") {
  const int64_t d = 8, S = 5;
  Mat<double> m = random_mat(2 * S, 3 + 2 * 11, 7);  // two groups of 8 at columns 3 and 14
  const Mat<double> orig = m;
  rope_apply(m, 3, d, 2, 11, S, 10000.0, false);
  for (int64_t r = 0; r < 2 * S; ++r) {
    for (int64_t g = 0; g < 2; ++g) {
      std::vector<double> in(d);
      for (int64_t j = 0; j < d; ++j) in[j] = orig(r, 3 + g * 11 + j);
      const std::vector<double> ref = hf_rope(in, static_cast<double>(r % S), 10000.0);
      for (int64_t j = 0; j < d; ++j) CHECK(m(r, 3 + g * 11 + j) == Approx(ref[j]).margin(1e-14));
    }
    CHECK(m.block(r, 0, 1, 3) == orig.block(r, 0, 1, 3));  // other columns untouched
    CHECK(m.block(r, 11, 1, 3) == orig.block(r, 11, 1, 3));
  }
  // the inverse is the transpose of a rotation: it undoes the forward
  rope_apply(m, 3, d, 2, 11, S, 10000.0, true);
  CHECK((m - orig).norm() < 1e-13);
}

TEST_CASE("mla: forward equals an independent Eigen reference", "[nn][mla]") {
  for (int64_t q_lora : {12, 0}) {
    const MlaConfig c = small_config(q_lora);
    const MlaWeights<double> w = random_weights(c, 100);
    const Mat<double> x = random_mat(16, c.hidden, 3);
    const Mat<double> y = mla_forward(c, w, x, 8, Numerics::exact, nullptr);
    CHECK(rel_err(y, reference_mla(c, w, x, 8)) < 1e-12);
  }
}

TEST_CASE("mla: backward input and weight match finite differences", "[nn][mla]") {
  for (int64_t q_lora : {12, 0}) {
    INFO("q_lora_rank " << q_lora);
    const MlaConfig c = small_config(q_lora);
    MlaWeights<double> w = random_weights(c, 200);
    Mat<double> x = random_mat(16, c.hidden, 5);  // 2 sequences x 8 tokens
    const Mat<double> R = random_mat(16, c.hidden, 6);
    auto loss = [&] { return dot(mla_forward(c, w, x, 8, Numerics::exact, nullptr), R); };
    MlaSaved<double> saved;
    mla_forward(c, w, x, 8, Numerics::exact, &saved);
    const MlaInputGrad<double> g = mla_backward_input(c, w, saved, R, Numerics::exact);
    MlaWeights<double> gw = mla_zero_weights<double>(c);
    mla_backward_weight(c, saved, g, R, Numerics::exact, gw);
    CHECK(rel_err(g.dx, finite_diff(x, loss)) < 1e-6);
    if (q_lora > 0) {
      CHECK(rel_err(gw.q_a_proj, finite_diff(w.q_a_proj, loss)) < 1e-6);
      Mat<double> qn = w.q_a_layernorm;
      auto loss_qn = [&] {
        w.q_a_layernorm = qn.col(0);
        return loss();
      };
      CHECK(rel_err(Mat<double>(gw.q_a_layernorm), finite_diff(qn, loss_qn)) < 1e-6);
      w.q_a_layernorm = qn.col(0);
      CHECK(rel_err(gw.q_b_proj, finite_diff(w.q_b_proj, loss)) < 1e-6);
    } else {
      CHECK(rel_err(gw.q_proj, finite_diff(w.q_proj, loss)) < 1e-6);
    }
    CHECK(rel_err(gw.kv_a_proj_with_mqa, finite_diff(w.kv_a_proj_with_mqa, loss)) < 1e-6);
    Mat<double> kn = w.kv_a_layernorm;
    auto loss_kn = [&] {
      w.kv_a_layernorm = kn.col(0);
      return loss();
    };
    CHECK(rel_err(Mat<double>(gw.kv_a_layernorm), finite_diff(kn, loss_kn)) < 1e-6);
    w.kv_a_layernorm = kn.col(0);
    CHECK(rel_err(gw.kv_b_proj, finite_diff(w.kv_b_proj, loss)) < 1e-6);
    CHECK(rel_err(gw.o_proj, finite_diff(w.o_proj, loss)) < 1e-6);
  }
}

TEST_CASE("mla: causal and per-sequence (bit-identical earlier rows, other sequences)", "[nn][mla]") {
  const MlaConfig c = small_config(12);
  const MlaWeights<float> w = to_float(random_weights(c, 300));
  const Mat<float> x = random_mat(24, c.hidden, 8).cast<float>();  // 3 sequences x 8 tokens
  const Mat<float> y = mla_forward(c, w, x, 8, Numerics::exact, nullptr);
  // change token 5 of sequence 1 (row 13)
  Mat<float> x2 = x;
  x2.row(13) = random_mat(1, c.hidden, 9).cast<float>();
  const Mat<float> y2 = mla_forward(c, w, x2, 8, Numerics::exact, nullptr);
  CHECK(bit_equal(Mat<float>(y.topRows(13)), Mat<float>(y2.topRows(13))));    // seq 0, seq 1 rows 0..4
  CHECK(bit_equal(Mat<float>(y.bottomRows(8)), Mat<float>(y2.bottomRows(8))));  // seq 2
  for (int64_t r = 13; r < 16; ++r) CHECK_FALSE(bit_equal(Mat<float>(y.row(r)), Mat<float>(y2.row(r))));
  // sequence 1 alone gives the same bits as inside the 3-sequence micro-batch
  const Mat<float> x1 = x.middleRows(8, 8);
  CHECK(bit_equal(mla_forward(c, w, x1, 8, Numerics::exact, nullptr), Mat<float>(y.middleRows(8, 8))));
  // gradients of sequence 1 alone equal its rows in the batch; weight grads split by sequence,
  // accumulated in order, equal the batch's
  const Mat<float> dy = random_mat(24, c.hidden, 10).cast<float>();
  MlaSaved<float> s_all, s_1;
  mla_forward(c, w, x, 8, Numerics::exact, &s_all);
  const MlaInputGrad<float> g_all = mla_backward_input(c, w, s_all, dy, Numerics::exact);
  MlaWeights<float> gw_all = mla_zero_weights<float>(c), gw_split = mla_zero_weights<float>(c);
  mla_backward_weight(c, s_all, g_all, dy, Numerics::exact, gw_all);
  for (int64_t b = 0; b < 3; ++b) {
    const Mat<float> xb = x.middleRows(8 * b, 8), dyb = dy.middleRows(8 * b, 8);
    MlaSaved<float> sb;
    mla_forward(c, w, xb, 8, Numerics::exact, &sb);
    const MlaInputGrad<float> gb = mla_backward_input(c, w, sb, dyb, Numerics::exact);
    CHECK(bit_equal(gb.dx, Mat<float>(g_all.dx.middleRows(8 * b, 8))));
    mla_backward_weight(c, sb, gb, dyb, Numerics::exact, gw_split);
  }
  CHECK(bit_equal(gw_all.q_a_proj, gw_split.q_a_proj));
  CHECK(bit_equal(gw_all.q_a_layernorm, gw_split.q_a_layernorm));
  CHECK(bit_equal(gw_all.q_b_proj, gw_split.q_b_proj));
  CHECK(bit_equal(gw_all.kv_a_proj_with_mqa, gw_split.kv_a_proj_with_mqa));
  CHECK(bit_equal(gw_all.kv_a_layernorm, gw_split.kv_a_layernorm));
  CHECK(bit_equal(gw_all.kv_b_proj, gw_split.kv_b_proj));
  CHECK(bit_equal(gw_all.o_proj, gw_split.o_proj));
}

TEST_CASE("mla: recompute on and off give bit-identical gradients", "[nn][mla]") {
  MlaConfig c = small_config(12);
  const MlaWeights<float> w = to_float(random_weights(c, 400));
  const Mat<float> x = random_mat(16, c.hidden, 11).cast<float>();
  const Mat<float> dy = random_mat(16, c.hidden, 12).cast<float>();
  MlaSaved<float> s_re, s_keep;
  c.recompute = true;
  const Mat<float> y1 = mla_forward(c, w, x, 8, Numerics::exact, &s_re);
  CHECK(s_re.q.size() == 0);
  CHECK_FALSE(s_re.kept);
  c.recompute = false;
  const Mat<float> y2 = mla_forward(c, w, x, 8, Numerics::exact, &s_keep);
  CHECK(s_keep.kept);
  CHECK(s_keep.q.size() > 0);
  CHECK(bit_equal(y1, y2));
  const MlaInputGrad<float> g1 = mla_backward_input(c, w, s_re, dy, Numerics::exact);
  const MlaInputGrad<float> g2 = mla_backward_input(c, w, s_keep, dy, Numerics::exact);
  CHECK(bit_equal(g1.dx, g2.dx));
  MlaWeights<float> w1 = mla_zero_weights<float>(c), w2 = mla_zero_weights<float>(c);
  mla_backward_weight(c, s_re, g1, dy, Numerics::exact, w1);
  mla_backward_weight(c, s_keep, g2, dy, Numerics::exact, w2);
  CHECK(bit_equal(w1.q_b_proj, w2.q_b_proj));
  CHECK(bit_equal(w1.kv_b_proj, w2.kv_b_proj));
  CHECK(bit_equal(w1.kv_a_layernorm, w2.kv_a_layernorm));
}

TEST_CASE("mla: float agrees with double; bf16 and fp8 close to exact", "[nn][mla]") {
  // tiny-moe's MLA shape (q_lora 128, kv_lora 128, 4 heads of 32+16 / 32), 2 x 32 tokens
  MlaConfig c;
  c.hidden = 256; c.heads = 4; c.q_lora_rank = 128; c.kv_lora_rank = 128;
  c.qk_nope = 32; c.qk_rope = 16; c.v_head = 32;
  const MlaWeights<double> w = random_weights(c, 500, 0.08);
  const MlaWeights<float> wf = to_float(w);
  const Mat<double> x = random_mat(64, c.hidden, 13);
  const Mat<float> xf = x.cast<float>();
  const Mat<double> dy = random_mat(64, c.hidden, 14);
  const Mat<float> dyf = dy.cast<float>();
  MlaSaved<double> sd;
  const Mat<double> yd = mla_forward(c, w, x, 32, Numerics::exact, &sd);
  const MlaInputGrad<double> gd = mla_backward_input(c, w, sd, dy, Numerics::exact);
  MlaWeights<double> gwd = mla_zero_weights<double>(c);
  mla_backward_weight(c, sd, gd, dy, Numerics::exact, gwd);
  for (Numerics n : {Numerics::exact, Numerics::bf16, Numerics::fp8}) {
    const double tol = n == Numerics::exact ? 1e-5 : n == Numerics::bf16 ? 3e-2 : 0.13;  // measured 6e-3 / 8e-2
    INFO("numerics " << static_cast<int>(n));
    MlaSaved<float> sf;
    const Mat<float> yf = mla_forward(c, wf, xf, 32, n, &sf);
    const MlaInputGrad<float> gf = mla_backward_input(c, wf, sf, dyf, n);
    MlaWeights<float> gwf = mla_zero_weights<float>(c);
    mla_backward_weight(c, sf, gf, dyf, n, gwf);
    const double ey = rel_err(yf.cast<double>(), yd);
    CHECK(ey < tol);
    if (n != Numerics::exact) CHECK(ey > 1e-4);  // it does round
    CHECK(rel_err(gf.dx.cast<double>(), gd.dx) < tol);
    CHECK(rel_err(gwf.q_a_proj.cast<double>(), gwd.q_a_proj) < tol);
    CHECK(rel_err(gwf.kv_b_proj.cast<double>(), gwd.kv_b_proj) < tol);
    CHECK(rel_err(gwf.o_proj.cast<double>(), gwd.o_proj) < tol);
    CHECK(rel_err(Mat<double>(gwf.kv_a_layernorm.cast<double>()), Mat<double>(gwd.kv_a_layernorm)) < tol);
  }
}
