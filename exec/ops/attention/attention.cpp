#include "exec/ops/attention/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "exec/ops/linear/linear.h"
#include "exec/ops/rmsnorm/rmsnorm.h"

namespace tandem::nn {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("mla: " + what);
}

// The activations between the down-projections and the attention core.
template <class T>
struct Projected {
  Mat<T> q_a_normed, kv_a_normed;
  Mat<T> q;     // after RoPE
  Mat<T> kv;
  Mat<T> k_pe;  // after RoPE
};

// From x's down-projection outputs q_a and kv_a: norms, up-projections, RoPE.
template <class T>
Projected<T> project_up(const MlaConfig& c, const MlaWeights<T>& w, const Mat<T>& x,
                        const Mat<T>& q_a, const Mat<T>& kv_a, int64_t seq_len, Numerics n) {
  Projected<T> p;
  if (c.q_lora_rank > 0) {
    p.q_a_normed = rmsnorm_forward(q_a, w.q_a_layernorm, c.rms_eps);
    p.q = linear_forward(p.q_a_normed, w.q_b_proj, n);
  } else {
    p.q = linear_forward(x, w.q_proj, n);
  }
  const Mat<T> c_kv = kv_a.leftCols(c.kv_lora_rank);
  p.kv_a_normed = rmsnorm_forward(c_kv, w.kv_a_layernorm, c.rms_eps);
  p.kv = linear_forward(p.kv_a_normed, w.kv_b_proj, n);
  p.k_pe = kv_a.rightCols(c.qk_rope);
  rope_apply(p.q, c.qk_nope, c.qk_rope, c.heads, c.qk_head(), seq_len, c.rope_theta, false);
  rope_apply(p.k_pe, 0, c.qk_rope, 1, c.qk_rope, seq_len, c.rope_theta, false);
  return p;
}

template <class T>
void check_config(const MlaConfig& c, const MlaWeights<T>& w) {
  require(c.hidden > 0 && c.heads > 0 && c.kv_lora_rank > 0 && c.qk_rope > 0 && c.qk_rope % 2 == 0 &&
              c.v_head > 0 && c.qk_nope >= 0 && c.q_lora_rank >= 0,
          "bad config");
  const int64_t qk = c.heads * c.qk_head();
  if (c.q_lora_rank > 0) {
    require(w.q_a_proj.rows() == c.q_lora_rank && w.q_a_proj.cols() == c.hidden, "q_a_proj shape");
    require(w.q_a_layernorm.size() == c.q_lora_rank, "q_a_layernorm shape");
    require(w.q_b_proj.rows() == qk && w.q_b_proj.cols() == c.q_lora_rank, "q_b_proj shape");
  } else {
    require(w.q_proj.rows() == qk && w.q_proj.cols() == c.hidden, "q_proj shape");
  }
  require(w.kv_a_proj_with_mqa.rows() == c.kv_lora_rank + c.qk_rope &&
              w.kv_a_proj_with_mqa.cols() == c.hidden,
          "kv_a_proj_with_mqa shape");
  require(w.kv_a_layernorm.size() == c.kv_lora_rank, "kv_a_layernorm shape");
  require(w.kv_b_proj.rows() == c.heads * (c.qk_nope + c.v_head) &&
              w.kv_b_proj.cols() == c.kv_lora_rank,
          "kv_b_proj shape");
  require(w.o_proj.rows() == c.hidden && w.o_proj.cols() == c.heads * c.v_head, "o_proj shape");
}

}  // namespace


MlaConfig mla_config(const ModelCard& card) {
  MlaConfig c;
  c.hidden = card.hidden_size;
  c.heads = card.num_attention_heads;
  c.q_lora_rank = card.q_lora_rank.value_or(0);
  c.kv_lora_rank = card.kv_lora_rank;
  c.qk_nope = card.qk_nope_head_dim;
  c.qk_rope = card.qk_rope_head_dim;
  c.v_head = card.v_head_dim;
  c.rms_eps = card.rms_norm_eps;
  return c;
}

template <class T>
MlaWeights<T> mla_zero_weights(const MlaConfig& c) {
  MlaWeights<T> w;
  const int64_t qk = c.heads * c.qk_head();
  if (c.q_lora_rank > 0) {
    w.q_a_proj = Mat<T>::Zero(c.q_lora_rank, c.hidden);
    w.q_a_layernorm = Vec<T>::Zero(c.q_lora_rank);
    w.q_b_proj = Mat<T>::Zero(qk, c.q_lora_rank);
  } else {
    w.q_proj = Mat<T>::Zero(qk, c.hidden);
  }
  w.kv_a_proj_with_mqa = Mat<T>::Zero(c.kv_lora_rank + c.qk_rope, c.hidden);
  w.kv_a_layernorm = Vec<T>::Zero(c.kv_lora_rank);
  w.kv_b_proj = Mat<T>::Zero(c.heads * (c.qk_nope + c.v_head), c.kv_lora_rank);
  w.o_proj = Mat<T>::Zero(c.hidden, c.heads * c.v_head);
  return w;
}

template <class T>
void rope_apply(Mat<T>& m, int64_t col, int64_t width, int64_t count, int64_t stride,
                int64_t seq_len, double theta, bool inverse) {
  if (width % 2 != 0 || seq_len <= 0 || m.rows() % seq_len != 0 ||
      col + (count - 1) * stride + width > m.cols())
    throw std::invalid_argument("rope_apply: bad shape");
  const int64_t half = width / 2;
  std::vector<double> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(width));
  std::vector<T> cs(half), sn(half), tmp(width);
  for (int64_t r = 0; r < m.rows(); ++r) {
    const double pos = static_cast<double>(r % seq_len);
    for (int64_t i = 0; i < half; ++i) {
      cs[i] = static_cast<T>(std::cos(pos * inv_freq[i]));
      sn[i] = static_cast<T>(std::sin(pos * inv_freq[i]));
    }
    for (int64_t g = 0; g < count; ++g) {
      T* v = m.data() + r * m.cols() + col + g * stride;
      for (int64_t j = 0; j < width; ++j) tmp[j] = v[j];
      if (!inverse) {  // interleaved in, rotate-half layout out
        for (int64_t i = 0; i < half; ++i) {
          const T a = tmp[2 * i], b = tmp[2 * i + 1];
          v[i] = a * cs[i] - b * sn[i];
          v[i + half] = b * cs[i] + a * sn[i];
        }
      } else {  // transpose: rotate-half layout in, interleaved out
        for (int64_t i = 0; i < half; ++i) {
          const T lo = tmp[i], hi = tmp[i + half];
          v[2 * i] = lo * cs[i] + hi * sn[i];
          v[2 * i + 1] = hi * cs[i] - lo * sn[i];
        }
      }
    }
  }
}

template <class T>
void attention_core_forward(const Mat<T>& q, const Mat<T>& kv, const Mat<T>& k_pe, int64_t heads,
                            int64_t nope, int64_t rope, int64_t dv, int64_t seq_len, double scale,
                            Mat<T>& attn, Mat<T>& lse) {
  const int64_t M = q.rows(), dqk = nope + rope, dkv = nope + dv;
  if (seq_len <= 0 || M % seq_len != 0 || q.cols() != heads * dqk || kv.rows() != M ||
      kv.cols() != heads * dkv || k_pe.rows() != M || k_pe.cols() != rope)
    throw std::invalid_argument("attention_core_forward: bad shape");
  attn.setZero(M, heads * dv);
  lse.resize(M, heads);
  const T sc = static_cast<T>(scale);
  std::vector<T> s(seq_len);
  for (int64_t b = 0; b < M / seq_len; ++b) {
    const int64_t r0 = b * seq_len;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < seq_len; ++i) {
        const T* qi = q.data() + (r0 + i) * q.cols() + h * dqk;
        // scores over keys j <= i: one dot product over [nope | rope], in column order
        T mx = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          const T* kj = kv.data() + (r0 + j) * kv.cols() + h * dkv;
          const T* pj = k_pe.data() + (r0 + j) * rope;
          T acc = 0;
          for (int64_t d = 0; d < nope; ++d) acc += qi[d] * kj[d];
          for (int64_t d = 0; d < rope; ++d) acc += qi[nope + d] * pj[d];
          s[j] = acc * sc;
          mx = std::max(mx, s[j]);
        }
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          s[j] = std::exp(s[j] - mx);
          sum += s[j];
        }
        lse(r0 + i, h) = mx + std::log(sum);
        T* oi = attn.data() + (r0 + i) * attn.cols() + h * dv;
        for (int64_t j = 0; j <= i; ++j) {
          const T p = s[j] / sum;
          const T* vj = kv.data() + (r0 + j) * kv.cols() + h * dkv + nope;
          for (int64_t d = 0; d < dv; ++d) oi[d] += p * vj[d];
        }
      }
    }
  }
}

template <class T>
void attention_core_backward(const Mat<T>& q, const Mat<T>& kv, const Mat<T>& k_pe,
                             const Mat<T>& attn, const Mat<T>& lse, const Mat<T>& d_attn,
                             int64_t heads, int64_t nope, int64_t rope, int64_t dv,
                             int64_t seq_len, double scale, Mat<T>& dq, Mat<T>& dkv,
                             Mat<T>& dk_pe) {
  const int64_t M = q.rows(), dqk = nope + rope, dkvw = nope + dv;
  if (seq_len <= 0 || M % seq_len != 0 || q.cols() != heads * dqk || kv.rows() != M ||
      kv.cols() != heads * dkvw || k_pe.rows() != M || k_pe.cols() != rope ||
      attn.rows() != M || attn.cols() != heads * dv || lse.rows() != M || lse.cols() != heads ||
      d_attn.rows() != M || d_attn.cols() != heads * dv)
    throw std::invalid_argument("attention_core_backward: bad shape");
  dq.setZero(M, heads * dqk);
  dkv.setZero(M, heads * dkvw);
  dk_pe.setZero(M, rope);
  const T sc = static_cast<T>(scale);
  std::vector<T> ds(seq_len);
  for (int64_t b = 0; b < M / seq_len; ++b) {
    const int64_t r0 = b * seq_len;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < seq_len; ++i) {
        const int64_t ri = r0 + i;
        const T* qi = q.data() + ri * q.cols() + h * dqk;
        const T* oi = attn.data() + ri * attn.cols() + h * dv;
        const T* doi = d_attn.data() + ri * d_attn.cols() + h * dv;
        T D = 0;  // Σ_d dO·O = Σ_j P_j dP_j
        for (int64_t d = 0; d < dv; ++d) D += doi[d] * oi[d];
        const T l = lse(ri, h);
        T* dqi = dq.data() + ri * dq.cols() + h * dqk;
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t rj = r0 + j;
          const T* kj = kv.data() + rj * kv.cols() + h * dkvw;
          const T* vj = kj + nope;
          const T* pj = k_pe.data() + rj * rope;
          T acc = 0;
          for (int64_t d = 0; d < nope; ++d) acc += qi[d] * kj[d];
          for (int64_t d = 0; d < rope; ++d) acc += qi[nope + d] * pj[d];
          const T p = std::exp(acc * sc - l);
          T dp = 0;
          for (int64_t d = 0; d < dv; ++d) dp += doi[d] * vj[d];
          ds[j] = p * (dp - D) * sc;  // gradient at the unscaled dot product
          T* dvj = dkv.data() + rj * dkv.cols() + h * dkvw + nope;
          for (int64_t d = 0; d < dv; ++d) dvj[d] += p * doi[d];
        }
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t rj = r0 + j;
          const T* kj = kv.data() + rj * kv.cols() + h * dkvw;
          const T* pj = k_pe.data() + rj * rope;
          T* dkj = dkv.data() + rj * dkv.cols() + h * dkvw;
          T* dpj = dk_pe.data() + rj * rope;
          const T g = ds[j];
          for (int64_t d = 0; d < nope; ++d) {
            dqi[d] += g * kj[d];
            dkj[d] += g * qi[d];
          }
          for (int64_t d = 0; d < rope; ++d) {
            dqi[nope + d] += g * pj[d];
            dpj[d] += g * qi[nope + d];
          }
        }
      }
    }
  }
}

template <class T>
Mat<T> mla_forward(const MlaConfig& c, const MlaWeights<T>& w, const Mat<T>& x, int64_t seq_len,
                   Numerics n, std::type_identity_t<MlaSaved<T>>* saved) {
  check_config(c, w);
  require(x.cols() == c.hidden, "x has " + std::to_string(x.cols()) + " columns");
  require(seq_len > 0 && x.rows() % seq_len == 0, "rows not a multiple of seq_len");
  Mat<T> q_a;
  if (c.q_lora_rank > 0) q_a = linear_forward(x, w.q_a_proj, n);
  Mat<T> kv_a = linear_forward(x, w.kv_a_proj_with_mqa, n);
  Projected<T> p = project_up(c, w, x, q_a, kv_a, seq_len, n);
  Mat<T> attn, lse;
  attention_core_forward(p.q, p.kv, p.k_pe, c.heads, c.qk_nope, c.qk_rope, c.v_head, seq_len,
                         c.softmax_scale(), attn, lse);
  Mat<T> out = linear_forward(attn, w.o_proj, n);
  if (saved) {
    saved->seq_len = seq_len;
    saved->x = x;
    saved->q_a = std::move(q_a);
    saved->kv_a = std::move(kv_a);
    saved->attn = std::move(attn);
    saved->lse = std::move(lse);
    saved->kept = !c.recompute;
    if (c.recompute) {
      saved->q_a_normed = Mat<T>();
      saved->kv_a_normed = Mat<T>();
      saved->q = Mat<T>();
      saved->kv = Mat<T>();
      saved->k_pe = Mat<T>();
    } else {
      saved->q_a_normed = std::move(p.q_a_normed);
      saved->kv_a_normed = std::move(p.kv_a_normed);
      saved->q = std::move(p.q);
      saved->kv = std::move(p.kv);
      saved->k_pe = std::move(p.k_pe);
    }
  }
  return out;
}

template <class T>
MlaInputGrad<T> mla_backward_input(const MlaConfig& c, const MlaWeights<T>& w,
                                   const MlaSaved<T>& s, const Mat<T>& dy, Numerics n) {
  check_config(c, w);
  require(dy.rows() == s.x.rows() && dy.cols() == c.hidden, "dy shape");
    Projected<T> p;
  if (s.kept) {  // recompute == false at forward time
    p.q_a_normed = s.q_a_normed;
    p.kv_a_normed = s.kv_a_normed;
    p.q = s.q;
    p.kv = s.kv;
    p.k_pe = s.k_pe;
  } else {
    p = project_up(c, w, s.x, s.q_a, s.kv_a, s.seq_len, n);
  }
  const Mat<T> d_attn = linear_backward_input(dy, w.o_proj, n);
  MlaInputGrad<T> g;
  Mat<T> dk_pe;
  attention_core_backward(p.q, p.kv, p.k_pe, s.attn, s.lse, d_attn, c.heads, c.qk_nope, c.qk_rope,
                          c.v_head, s.seq_len, c.softmax_scale(), g.d_q, g.d_kv, dk_pe);
  // back through RoPE (the rotation's transpose), to the projections' outputs
  rope_apply(g.d_q, c.qk_nope, c.qk_rope, c.heads, c.qk_head(), s.seq_len, c.rope_theta, true);
  rope_apply(dk_pe, 0, c.qk_rope, 1, c.qk_rope, s.seq_len, c.rope_theta, true);
  // query path
  if (c.q_lora_rank > 0) {
    g.d_q_a_normed = linear_backward_input(g.d_q, w.q_b_proj, n);
    g.d_q_a = rmsnorm_backward_input(s.q_a, w.q_a_layernorm, c.rms_eps, g.d_q_a_normed);
    g.dx = linear_backward_input(g.d_q_a, w.q_a_proj, n);
    g.q_a_normed = std::move(p.q_a_normed);
  } else {
    g.dx = linear_backward_input(g.d_q, w.q_proj, n);
  }
  // key/value path
  g.d_kv_a_normed = linear_backward_input(g.d_kv, w.kv_b_proj, n);
  const Mat<T> c_kv = s.kv_a.leftCols(c.kv_lora_rank);
  g.d_kv_a.resize(s.x.rows(), c.kv_lora_rank + c.qk_rope);
  g.d_kv_a.leftCols(c.kv_lora_rank) =
      rmsnorm_backward_input(c_kv, w.kv_a_layernorm, c.rms_eps, g.d_kv_a_normed);
  g.d_kv_a.rightCols(c.qk_rope) = dk_pe;
  g.dx += linear_backward_input(g.d_kv_a, w.kv_a_proj_with_mqa, n);
  g.kv_a_normed = std::move(p.kv_a_normed);
  return g;
}

template <class T>
void mla_backward_weight(const MlaConfig& c, const MlaSaved<T>& s, const MlaInputGrad<T>& g,
                         const Mat<T>& dy, Numerics n, MlaWeights<T>& grads) {
  check_config(c, grads);
  linear_backward_weight(dy, s.attn, n, grads.o_proj);
  if (c.q_lora_rank > 0) {
    linear_backward_weight(g.d_q, g.q_a_normed, n, grads.q_b_proj);
    rmsnorm_backward_weight(s.q_a, c.rms_eps, g.d_q_a_normed, grads.q_a_layernorm);
    linear_backward_weight(g.d_q_a, s.x, n, grads.q_a_proj);
  } else {
    linear_backward_weight(g.d_q, s.x, n, grads.q_proj);
  }
  linear_backward_weight(g.d_kv, g.kv_a_normed, n, grads.kv_b_proj);
  const Mat<T> c_kv = s.kv_a.leftCols(c.kv_lora_rank);
  rmsnorm_backward_weight(c_kv, c.rms_eps, g.d_kv_a_normed, grads.kv_a_layernorm);
  linear_backward_weight(g.d_kv_a, s.x, n, grads.kv_a_proj_with_mqa);
}

#define TANDEM_NN_MLA(T)                                                                         \
  template MlaWeights<T> mla_zero_weights<T>(const MlaConfig&);                                  \
  template void rope_apply<T>(Mat<T>&, int64_t, int64_t, int64_t, int64_t, int64_t, double, bool); \
  template void attention_core_forward<T>(const Mat<T>&, const Mat<T>&, const Mat<T>&, int64_t,  \
                                          int64_t, int64_t, int64_t, int64_t, double, Mat<T>&,   \
                                          Mat<T>&);                                              \
  template void attention_core_backward<T>(                                                      \
      const Mat<T>&, const Mat<T>&, const Mat<T>&, const Mat<T>&, const Mat<T>&, const Mat<T>&,  \
      int64_t, int64_t, int64_t, int64_t, int64_t, double, Mat<T>&, Mat<T>&, Mat<T>&);           \
  template Mat<T> mla_forward<T>(const MlaConfig&, const MlaWeights<T>&, const Mat<T>&, int64_t, \
                                 Numerics, MlaSaved<T>*);                                        \
  template MlaInputGrad<T> mla_backward_input<T>(const MlaConfig&, const MlaWeights<T>&,         \
                                                 const MlaSaved<T>&, const Mat<T>&, Numerics);   \
  template void mla_backward_weight<T>(const MlaConfig&, const MlaSaved<T>&,                     \
                                       const MlaInputGrad<T>&, const Mat<T>&, Numerics,          \
                                       MlaWeights<T>&);
TANDEM_NN_MLA(float)
TANDEM_NN_MLA(double)
#undef TANDEM_NN_MLA

}  // namespace tandem::nn
