#include "exec/ops/balance/balance.h"

#include <algorithm>
#include <stdexcept>

#include "common/signed_index.h"

namespace tandem::moe {

void add_expert_counts(const Routing& routing, std::vector<int64_t>& counts) {
  add_expert_counts(std::span<const int32_t>(routing.expert.data(), routing.expert.size()), counts);
}

void add_expert_counts(std::span<const int32_t> expert, std::vector<int64_t>& counts) {
  for (int32_t e : expert) {
    if (e < 0 || idx(e) >= counts.size())
      throw std::invalid_argument("add_expert_counts: expert index out of range");
    ++counts[idx(e)];
  }
}

std::vector<int64_t> expert_counts(const Routing& routing, int n_routed) {
  std::vector<int64_t> counts(idx(n_routed), 0);
  add_expert_counts(routing, counts);
  return counts;
}

LoadStats load_stats(const std::vector<int64_t>& counts) {
  LoadStats s;
  if (counts.empty()) return s;
  s.max = *std::max_element(counts.begin(), counts.end());
  s.min = *std::min_element(counts.begin(), counts.end());
  for (int64_t c : counts) s.total += c;
  s.mean = static_cast<double>(s.total) / static_cast<double>(counts.size());
  s.max_over_mean = s.total > 0 ? static_cast<double>(s.max) / s.mean : 0.0;
  return s;
}

template <class T>
void update_bias(Vec<T>& bias, const std::vector<int64_t>& counts, double gamma) {
  if (idx(bias.size()) != counts.size())
    throw std::invalid_argument("update_bias: bias and counts differ in size");
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  const int64_t n = static_cast<int64_t>(counts.size());
  const T step = static_cast<T>(gamma);
  for (int64_t e = 0; e < n; ++e) {
    const int64_t scaled = counts[idx(e)] * n;  // E·c_e vs Σc: mean − c_e exactly
    if (scaled < total) bias(e) += step;
    else if (scaled > total) bias(e) -= step;
  }
}

namespace {
void check_shape(const Routing& r, Eigen::Index score_rows, int seq_len) {
  if (seq_len <= 0 || r.tokens % seq_len != 0)
    throw std::invalid_argument("balance loss: tokens must be a whole number of sequences");
  if (score_rows != r.tokens) throw std::invalid_argument("balance loss: scores rows != tokens");
}
}  // namespace

template <class T>
BalanceLoss<T> balance_loss_forward(const Routing& routing, const Mat<T>& scores, int seq_len, double alpha) {
  check_shape(routing, scores.rows(), seq_len);
  const int E = static_cast<int>(scores.cols()), K = routing.top_k;
  const int n_seq = routing.tokens / seq_len;
  BalanceLoss<T> out;
  out.f = Mat<T>::Zero(n_seq, E);
  out.P = Mat<T>::Zero(n_seq, E);
  out.per_sequence.assign(idx(n_seq), T(0));
  const T f_scale = static_cast<T>(E) / (static_cast<T>(K) * static_cast<T>(seq_len));
  const T a = static_cast<T>(alpha);
  for (int q = 0; q < n_seq; ++q) {
    std::vector<int64_t> count(idx(E), 0);
    for (int t = q * seq_len; t < (q + 1) * seq_len; ++t) {
      for (int j = 0; j < K; ++j) ++count[idx(routing.at(t, j))];
      T sum = 0;
      for (int e = 0; e < E; ++e) sum += scores(t, e);
      for (int e = 0; e < E; ++e) out.P(q, e) += scores(t, e) / sum;
    }
    T l = 0;
    for (int e = 0; e < E; ++e) {
      out.f(q, e) = f_scale * static_cast<T>(count[idx(e)]);
      out.P(q, e) /= static_cast<T>(seq_len);
      l += out.f(q, e) * out.P(q, e);
    }
    out.per_sequence[idx(q)] = a * l;
    out.loss += a * l;
  }
  return out;
}

template <class T>
Mat<T> balance_loss_backward(const BalanceLoss<T>& fwd, const Mat<T>& scores, int seq_len, double alpha,
                             T d_loss) {
  const int E = static_cast<int>(scores.cols());
  const int n_seq = static_cast<int>(fwd.f.rows());
  if (scores.rows() != static_cast<Eigen::Index>(n_seq) * seq_len)
    throw std::invalid_argument("balance_loss_backward: scores rows != sequences · seq_len");
  Mat<T> ds(scores.rows(), E);
  const T a = static_cast<T>(alpha);
  std::vector<T> g(idx(E));
  for (int q = 0; q < n_seq; ++q) {
    // dJ/ds'_{t,i} = d_loss · α f_i / T (the same for every token of the sequence)
    for (int e = 0; e < E; ++e) g[e] = d_loss * a * fwd.f(q, e) / static_cast<T>(seq_len);
    for (int t = q * seq_len; t < (q + 1) * seq_len; ++t) {
      // s'_i = s_i / S  ⇒  dJ/ds_j = (g_j − Σ_i g_i s'_i) / S
      T sum = 0;
      for (int e = 0; e < E; ++e) sum += scores(t, e);
      T dot = 0;
      for (int e = 0; e < E; ++e) dot += g[e] * (scores(t, e) / sum);
      for (int e = 0; e < E; ++e) ds(t, e) = (g[e] - dot) / sum;
    }
  }
  return ds;
}

#define TANDEM_MOE_BALANCE(T)                                                                       \
  template void update_bias<T>(Vec<T>&, const std::vector<int64_t>&, double);                     \
  template BalanceLoss<T> balance_loss_forward<T>(const Routing&, const Mat<T>&, int, double);    \
  template Mat<T> balance_loss_backward<T>(const BalanceLoss<T>&, const Mat<T>&, int, double, T);
TANDEM_MOE_BALANCE(float)
TANDEM_MOE_BALANCE(double)
#undef TANDEM_MOE_BALANCE

}  // namespace tandem::moe
