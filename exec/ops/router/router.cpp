#include "exec/ops/router/router.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/ops/linear/linear.h"

namespace tandem::moe {

namespace {

// Rank order: higher score first, the lower index on equal scores.
template <class T>
struct Better {
  const T* v;
  bool operator()(int a, int b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

template <class T>
T sigmoid(T z) {
  return T(1) / (T(1) + std::exp(-z));
}

}  // namespace

template <class T>
void select_token(const RouterConfig& cfg, const T* scores, const T* bias, int32_t* out) {
  const int E = cfg.n_routed, G = cfg.n_group, per = cfg.experts_per_group();
  thread_local std::vector<T> biased, group_score;
  thread_local std::vector<int> order;
  thread_local std::vector<char> allowed;
  biased.resize(idx(E));
  for (int e = 0; e < E; ++e) biased[e] = scores[e] + bias[e];

  allowed.assign(idx(E), 1);
  if (cfg.topk_group < G) {
    group_score.resize(idx(G));
    for (int g = 0; g < G; ++g) {
      const T* b = biased.data() + idx(g) * per;
      if (per == 1) {
        group_score[g] = b[0];
        continue;
      }
      T m1 = b[0], m2 = b[1];
      if (m2 > m1) std::swap(m1, m2);
      for (int i = 2; i < per; ++i) {
        if (b[i] > m1) {
          m2 = m1;
          m1 = b[i];
        } else if (b[i] > m2) {
          m2 = b[i];
        }
      }
      group_score[g] = m1 + m2;
    }
    order.resize(idx(G));
    for (int g = 0; g < G; ++g) order[g] = g;
    std::partial_sort(order.begin(), order.begin() + cfg.topk_group, order.end(),
                      Better<T>{group_score.data()});
    allowed.assign(idx(E), 0);
    for (int i = 0; i < cfg.topk_group; ++i)
      std::fill_n(allowed.begin() + static_cast<ptrdiff_t>(order[i]) * per, per, char{1});
  }

  order.clear();
  for (int e = 0; e < E; ++e)
    if (allowed[e]) order.push_back(e);
  std::partial_sort(order.begin(), order.begin() + cfg.top_k, order.end(), Better<T>{biased.data()});
  for (int j = 0; j < cfg.top_k; ++j) out[j] = order[j];
}

template <class T>
Routing select_experts(const RouterConfig& cfg, const Mat<T>& scores, const Vec<T>& bias) {
  cfg.validate();
  if (scores.cols() != cfg.n_routed || bias.size() != cfg.n_routed)
    throw std::invalid_argument("select_experts: scores/bias width != n_routed");
  Routing r;
  r.tokens = static_cast<int>(scores.rows());
  r.top_k = cfg.top_k;
  r.expert.resize(idx(r.tokens) * r.top_k);
  for (int t = 0; t < r.tokens; ++t)
    select_token<T>(cfg, scores.row(t).data(), bias.data(), r.expert.data() + idx(t) * r.top_k);
  return r;
}

template <class T>
Mat<T> gate_weights(const RouterConfig& cfg, const Mat<T>& scores, const Routing& routing) {
  const T rsf = static_cast<T>(cfg.routed_scaling_factor);
  Mat<T> gate(routing.tokens, routing.top_k);
  for (int t = 0; t < routing.tokens; ++t) {
    T sum = 0;
    for (int j = 0; j < routing.top_k; ++j) sum += scores(t, routing.at(t, j));
    for (int j = 0; j < routing.top_k; ++j) {
      const T s = scores(t, routing.at(t, j));
      gate(t, j) = cfg.norm_topk_prob ? s / sum * rsf : s * rsf;
    }
  }
  return gate;
}

template <class T>
RouterState<T> router_forward(const RouterConfig& cfg, const Mat<T>& Wg, const Vec<T>& bias,
                              const Mat<T>& x, const Routing* fixed) {
  cfg.validate();
  if (Wg.rows() != cfg.n_routed || Wg.cols() != x.cols())
    throw std::invalid_argument("router_forward: gate weight must be [n_routed, hidden]");
  RouterState<T> st;
  st.x = x;
  st.scores = nn::linear_forward<T>(x, Wg, nn::Numerics::exact).unaryExpr([](T z) { return sigmoid(z); });
  if (fixed) {
    if (fixed->tokens != x.rows() || fixed->top_k != cfg.top_k)
      throw std::invalid_argument("router_forward: fixed routing has the wrong shape");
    st.routing = *fixed;
  } else {
    st.routing = select_experts<T>(cfg, st.scores, bias);
  }
  st.gate = gate_weights<T>(cfg, st.scores, st.routing);
  return st;
}

template <class T>
Mat<T> router_backward_logits(const RouterConfig& cfg, const RouterState<T>& st, const Mat<T>& d_gate,
                              const Mat<T>* d_scores) {
  const Routing& r = st.routing;
  if (d_gate.rows() != r.tokens || d_gate.cols() != r.top_k)
    throw std::invalid_argument("router_backward_logits: d_gate must be [tokens, top_k]");
  Mat<T> ds;
  if (d_scores) {
    if (d_scores->rows() != st.scores.rows() || d_scores->cols() != st.scores.cols())
      throw std::invalid_argument("router_backward_logits: d_scores must be [tokens, n_routed]");
    ds = *d_scores;
  } else {
    ds = Mat<T>::Zero(st.scores.rows(), st.scores.cols());
  }
  const T rsf = static_cast<T>(cfg.routed_scaling_factor);
  for (int t = 0; t < r.tokens; ++t) {
    if (cfg.norm_topk_prob) {
      // gate_j = rsf · s_j / S  ⇒  ds_i = rsf / S · (dg_i − Σ_j dg_j s_j / S)
      T sum = 0, dot = 0;
      for (int j = 0; j < r.top_k; ++j) sum += st.scores(t, r.at(t, j));
      for (int j = 0; j < r.top_k; ++j) dot += d_gate(t, j) * st.scores(t, r.at(t, j));
      for (int j = 0; j < r.top_k; ++j) ds(t, r.at(t, j)) += rsf * (d_gate(t, j) - dot / sum) / sum;
    } else {
      for (int j = 0; j < r.top_k; ++j) ds(t, r.at(t, j)) += rsf * d_gate(t, j);
    }
  }
  Mat<T> d_logits(ds.rows(), ds.cols());
  for (Eigen::Index t = 0; t < ds.rows(); ++t)
    for (Eigen::Index e = 0; e < ds.cols(); ++e) {
      const T s = st.scores(t, e);
      d_logits(t, e) = ds(t, e) * (s * (T(1) - s));
    }
  return d_logits;
}

template <class T>
Mat<T> router_backward_input(const Mat<T>& Wg, const Mat<T>& d_logits) {
  return nn::linear_backward_input<T>(d_logits, Wg, nn::Numerics::exact);
}

template <class T>
void router_backward_weight(const RouterState<T>& st, const Mat<T>& d_logits, Mat<T>& dWg) {
  nn::linear_backward_weight<T>(d_logits, st.x, nn::Numerics::exact, dWg);
}

#define TANDEM_MOE_ROUTER(T)                                                                         \
  template void select_token<T>(const RouterConfig&, const T*, const T*, int32_t*);                 \
  template Routing select_experts<T>(const RouterConfig&, const Mat<T>&, const Vec<T>&);            \
  template Mat<T> gate_weights<T>(const RouterConfig&, const Mat<T>&, const Routing&);              \
  template RouterState<T> router_forward<T>(const RouterConfig&, const Mat<T>&, const Vec<T>&,      \
                                            const Mat<T>&, const Routing*);                         \
  template Mat<T> router_backward_logits<T>(const RouterConfig&, const RouterState<T>&,             \
                                            const Mat<T>&, const Mat<T>*);                          \
  template Mat<T> router_backward_input<T>(const Mat<T>&, const Mat<T>&);                           \
  template void router_backward_weight<T>(const RouterState<T>&, const Mat<T>&, Mat<T>&);
TANDEM_MOE_ROUTER(float)
TANDEM_MOE_ROUTER(double)
#undef TANDEM_MOE_ROUTER

}  // namespace tandem::moe
