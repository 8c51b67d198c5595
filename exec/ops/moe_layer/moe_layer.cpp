#include "exec/ops/moe_layer/moe_layer.h"

#include <random>
#include <stdexcept>
#include <utility>

#include "common/signed_index.h"
#include "common/splitmix64.h"

namespace tandem::moe {

namespace {

enum class Tensor : uint64_t { router = 1, shared = 2, routed = 3 };
enum class Part : uint64_t { gate = 0, up = 1, down = 2, whole = 3 };

uint64_t stream_seed(uint64_t seed, Tensor t, uint64_t index, Part p) {
  const uint64_t tag = (static_cast<uint64_t>(t) << 56) | (index << 8) | static_cast<uint64_t>(p);
  return splitmix64(seed ^ splitmix64(tag));
}

constexpr double kInitStd = 0.006;

template <class T>
Mat<T> normal_matrix(Eigen::Index rows, Eigen::Index cols, uint64_t s) {
  std::mt19937_64 gen(s);
  std::normal_distribution<double> dist(0.0, kInitStd);
  Mat<T> m(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index c = 0; c < cols; ++c) m(r, c) = static_cast<T>(dist(gen));
  return m;
}

template <class T>
nn::FfnWeights<T> ffn_init(int hidden, int inter, uint64_t seed, Tensor t, uint64_t index) {
  nn::FfnWeights<T> f;
  f.gate = normal_matrix<T>(inter, hidden, stream_seed(seed, t, index, Part::gate));
  f.up = normal_matrix<T>(inter, hidden, stream_seed(seed, t, index, Part::up));
  f.down = normal_matrix<T>(hidden, inter, stream_seed(seed, t, index, Part::down));
  return f;
}

template <class T>
nn::FfnWeights<T> ffn_zeros_like(const nn::FfnWeights<T>& w) {
  nn::FfnWeights<T> g;
  g.gate = Mat<T>::Zero(w.gate.rows(), w.gate.cols());
  g.up = Mat<T>::Zero(w.up.rows(), w.up.cols());
  g.down = Mat<T>::Zero(w.down.rows(), w.down.cols());
  return g;
}

void check_rank(const MoeConfig& cfg, int rank) {
  if (rank < 0 || rank >= cfg.ep.ep) throw std::invalid_argument("moe: rank out of range");
}

template <class T>
void check_local_experts(const MoeConfig& cfg, const MoeWeights<T>& w, const SegmentLayout& seg) {
  if (static_cast<int>(w.experts.size()) != seg.n_local || w.first_expert != seg.first_expert)
    throw std::invalid_argument("moe: the weights hold other experts than this member's");
  if (seg.cols != cfg.hidden) throw std::invalid_argument("moe: received rows are not hidden wide");
}

}  // namespace

template <class T>
MoeWeights<T> init_moe_weights(const MoeConfig& cfg, int rank, uint64_t seed) {
  cfg.router.validate();
  check_rank(cfg, rank);
  MoeWeights<T> w;
  w.router = normal_matrix<T>(cfg.router.n_routed, cfg.hidden, stream_seed(seed, Tensor::router, 0, Part::whole));
  w.bias = Vec<T>::Zero(cfg.router.n_routed);
  w.first_expert = cfg.ep.first_expert(rank);
  for (int i = 0; i < cfg.ep.experts_per_rank(); ++i)
    w.experts.push_back(ffn_init<T>(cfg.hidden, cfg.moe_inter, seed, Tensor::routed,
                                    static_cast<uint64_t>(w.first_expert + i)));
  if (cfg.n_shared > 0) w.shared = ffn_init<T>(cfg.hidden, cfg.n_shared * cfg.moe_inter, seed, Tensor::shared, 0);
  return w;
}

template <class T>
MoeGrads<T> zero_grads(const MoeWeights<T>& w) {
  MoeGrads<T> g;
  g.router = Mat<T>::Zero(w.router.rows(), w.router.cols());
  for (const auto& e : w.experts) g.experts.push_back(ffn_zeros_like(e));
  g.shared = ffn_zeros_like(w.shared);
  return g;
}

// ---- forward ----

template <class T>
MoeTokenState<T> route(const MoeConfig& cfg, const MoeWeights<T>& w, const Mat<T>& x, const Routing* fixed) {
  if (x.cols() != cfg.hidden) throw std::invalid_argument("moe route: x must be [tokens, hidden]");
  MoeTokenState<T> st;
  st.router = router_forward<T>(cfg.router, w.router, w.bias, x, fixed);
  st.plan = make_dispatch_plan(cfg.ep, st.router.routing);
  return st;
}

template <class T>
std::vector<Buffer> dispatch_pack(const MoeConfig& cfg, const MoeTokenState<T>& st, const Mat<T>& x) {
  return pack_dispatch<T>(st.plan, x, cfg.dispatch_wire);
}

template <class T>
MoeExpertState<T> dispatch_unpack(const MoeConfig& cfg, int rank, const std::vector<Buffer>& recv,
                                  std::vector<fp8::RowwiseFp8>* fp8_segments) {
  check_rank(cfg, rank);
  ExpertRows<T> rows = unpack_dispatch<T>(cfg.ep, rank, recv, cfg.align, fp8_segments);
  MoeExpertState<T> es;
  es.layout = std::move(rows.layout);
  es.x = std::move(rows.x);
  return es;
}

template <class T>
void experts_forward(const MoeConfig& cfg, const MoeWeights<T>& w, MoeExpertState<T>& es) {
  check_local_experts(cfg, w, es.layout);
  const int n = es.layout.n_local;
  es.saved.assign(idx(n), {});
  es.y.assign(idx(n), {});
  for (int e = 0; e < n; ++e) {
    const size_t i = idx(e);
    if (es.layout.padded[i] == 0) {
      es.y[i] = Mat<T>(0, cfg.hidden);
      continue;
    }
    es.y[i] = nn::ffn_forward<T>(w.experts[i], es.x[i], cfg.numerics, &es.saved[i]);
    es.x[i] = Mat<T>();  // kept in saved[i].x
  }
}

template <class T>
std::vector<Buffer> combine_pack(const MoeConfig& cfg, MoeExpertState<T>& es) {
  std::vector<Buffer> out = pack_combine<T>(es.layout, es.y, cfg.combine_wire);
  es.y.clear();
  return out;
}

template <class T>
Mat<T> combine(const MoeConfig&, MoeTokenState<T>& st, const std::vector<Buffer>& recv) {
  st.y_slots = unpack_combine<T>(st.plan, recv);
  return weighted_sum_slots<T>(st.y_slots, st.router.gate);
}

template <class T>
Mat<T> shared_expert_forward(const MoeConfig& cfg, const MoeWeights<T>& w, const Mat<T>& x, nn::FfnSaved<T>* saved) {
  if (cfg.n_shared == 0) return Mat<T>::Zero(x.rows(), cfg.hidden);
  return nn::ffn_forward<T>(w.shared, x, cfg.numerics, saved);
}

// ---- backward ----

template <class T>
std::vector<Buffer> combine_backward_pack(const MoeConfig& cfg, MoeTokenState<T>& st, const Mat<T>& dout) {
  SlotGrad<T> g = weighted_sum_slots_backward<T>(st.y_slots, st.router.gate, dout);
  st.d_gate = std::move(g.d_gate);
  st.y_slots = Mat<T>();  // only d_gate needed it
  return pack_combine_grad<T>(st.plan, g.dy_slots, cfg.combine_grad_wire);
}

template <class T>
void combine_backward_unpack(const MoeConfig&, MoeExpertState<T>& es, const std::vector<Buffer>& recv) {
  es.dy = unpack_combine_grad<T>(es.layout, recv);
}

template <class T>
void experts_backward_input(const MoeConfig& cfg, const MoeWeights<T>& w, MoeExpertState<T>& es) {
  check_local_experts(cfg, w, es.layout);
  const int n = es.layout.n_local;
  if (static_cast<int>(es.dy.size()) != n || static_cast<int>(es.saved.size()) != n)
    throw std::invalid_argument("experts_backward_input: run experts_forward and combine_backward_unpack first");
  es.in_grad.assign(idx(n), {});
  es.dx.assign(idx(n), {});
  for (int e = 0; e < n; ++e) {
    const size_t i = idx(e);
    if (es.layout.padded[i] == 0) {
      es.dx[i] = Mat<T>(0, cfg.hidden);
      continue;
    }
    es.in_grad[i] = nn::ffn_backward_input<T>(w.experts[i], es.saved[i], es.dy[i], cfg.numerics);
    es.dx[i] = std::move(es.in_grad[i].dx);  // the weight pass does not read dx
  }
}

template <class T>
std::vector<Buffer> dispatch_backward_pack(const MoeConfig& cfg, MoeExpertState<T>& es) {
  std::vector<Buffer> out = pack_dispatch_grad<T>(es.layout, es.dx, cfg.dispatch_grad_wire);
  es.dx.clear();
  return out;
}

template <class T>
void experts_backward_weight(const MoeConfig& cfg, MoeExpertState<T>& es, MoeGrads<T>& grads) {
  const int n = es.layout.n_local;
  if (static_cast<int>(grads.experts.size()) != n)
    throw std::invalid_argument("experts_backward_weight: grads hold other experts than this member's");
  if (static_cast<int>(es.in_grad.size()) != n) throw std::invalid_argument("experts_backward_weight: run experts_backward_input first");
  for (int e = 0; e < n; ++e) {
    const size_t i = idx(e);
    if (es.layout.padded[i] == 0) continue;
    nn::ffn_backward_weight<T>(es.saved[i], es.in_grad[i], es.dy[i], cfg.numerics, grads.experts[i]);
  }
  es.saved.clear();
  es.in_grad.clear();
  es.dy.clear();
}

template <class T>
Mat<T> dispatch_backward_unpack(const MoeConfig& cfg, const MoeTokenState<T>& st, const std::vector<Buffer>& recv) {
  return sum_slots<T>(unpack_dispatch_grad<T>(st.plan, recv), cfg.router.top_k);
}

template <class T>
Mat<T> route_backward_input(const MoeConfig& cfg, const MoeWeights<T>& w, MoeTokenState<T>& st, const Mat<T>* d_scores) {
  st.d_logits = router_backward_logits<T>(cfg.router, st.router, st.d_gate, d_scores);
  return router_backward_input<T>(w.router, st.d_logits);
}

template <class T>
void route_backward_weight(const MoeConfig&, const MoeTokenState<T>& st, MoeGrads<T>& grads) {
  router_backward_weight<T>(st.router, st.d_logits, grads.router);
}

template <class T>
nn::FfnInputGrad<T> shared_expert_backward_input(const MoeConfig& cfg, const MoeWeights<T>& w,
                                                 const nn::FfnSaved<T>& saved, const Mat<T>& dout) {
  if (cfg.n_shared == 0) {
    nn::FfnInputGrad<T> g;
    g.dx = Mat<T>::Zero(dout.rows(), cfg.hidden);
    return g;
  }
  return nn::ffn_backward_input<T>(w.shared, saved, dout, cfg.numerics);
}

template <class T>
void shared_expert_backward_weight(const MoeConfig& cfg, const nn::FfnSaved<T>& saved, const nn::FfnInputGrad<T>& g,
                                   const Mat<T>& dout, MoeGrads<T>& grads) {
  if (cfg.n_shared == 0) return;
  nn::ffn_backward_weight<T>(saved, g, dout, cfg.numerics, grads.shared);
}

// ---- single-rank reference ----

template <class T>
Mat<T> moe_forward_local(const MoeConfig& cfg, const MoeWeights<T>& w, const Mat<T>& x, MoeLocalState<T>* st,
                         const Routing* fixed) {
  if (cfg.ep.ep != 1) throw std::invalid_argument("moe_forward_local: needs ep = 1");
  MoeLocalState<T> tmp;
  MoeLocalState<T>& s = st ? *st : tmp;
  s.token = route<T>(cfg, w, x, fixed);
  s.experts = dispatch_unpack<T>(cfg, 0, dispatch_pack<T>(cfg, s.token, x));
  experts_forward<T>(cfg, w, s.experts);
  Mat<T> out = combine<T>(cfg, s.token, combine_pack<T>(cfg, s.experts));
  out += shared_expert_forward<T>(cfg, w, x, &s.shared);
  return out;
}

template <class T>
Mat<T> moe_backward_local(const MoeConfig& cfg, const MoeWeights<T>& w, MoeLocalState<T>& st, const Mat<T>& dout,
                          MoeGrads<T>& grads, const Mat<T>* d_scores) {
  if (cfg.ep.ep != 1) throw std::invalid_argument("moe_backward_local: needs ep = 1");
  combine_backward_unpack<T>(cfg, st.experts, combine_backward_pack<T>(cfg, st.token, dout));
  experts_backward_input<T>(cfg, w, st.experts);
  Mat<T> dx = dispatch_backward_unpack<T>(cfg, st.token, dispatch_backward_pack<T>(cfg, st.experts));
  dx += route_backward_input<T>(cfg, w, st.token, d_scores);
  nn::FfnInputGrad<T> gs = shared_expert_backward_input<T>(cfg, w, st.shared, dout);
  dx += gs.dx;
  experts_backward_weight<T>(cfg, st.experts, grads);
  route_backward_weight<T>(cfg, st.token, grads);
  shared_expert_backward_weight<T>(cfg, st.shared, gs, dout, grads);
  return dx;
}

#define TANDEM_MOE_LAYER(T)                                                                                     \
  template MoeWeights<T> init_moe_weights<T>(const MoeConfig&, int, uint64_t);                                 \
  template MoeGrads<T> zero_grads<T>(const MoeWeights<T>&);                                                    \
  template MoeTokenState<T> route<T>(const MoeConfig&, const MoeWeights<T>&, const Mat<T>&, const Routing*);   \
  template std::vector<Buffer> dispatch_pack<T>(const MoeConfig&, const MoeTokenState<T>&, const Mat<T>&);     \
  template MoeExpertState<T> dispatch_unpack<T>(const MoeConfig&, int, const std::vector<Buffer>&,            \
                                                std::vector<fp8::RowwiseFp8>*);                                \
  template void experts_forward<T>(const MoeConfig&, const MoeWeights<T>&, MoeExpertState<T>&);               \
  template std::vector<Buffer> combine_pack<T>(const MoeConfig&, MoeExpertState<T>&);                         \
  template Mat<T> combine<T>(const MoeConfig&, MoeTokenState<T>&, const std::vector<Buffer>&);                 \
  template Mat<T> shared_expert_forward<T>(const MoeConfig&, const MoeWeights<T>&, const Mat<T>&,             \
                                           nn::FfnSaved<T>*);                                                  \
  template std::vector<Buffer> combine_backward_pack<T>(const MoeConfig&, MoeTokenState<T>&, const Mat<T>&);   \
  template void combine_backward_unpack<T>(const MoeConfig&, MoeExpertState<T>&, const std::vector<Buffer>&);  \
  template void experts_backward_input<T>(const MoeConfig&, const MoeWeights<T>&, MoeExpertState<T>&);        \
  template std::vector<Buffer> dispatch_backward_pack<T>(const MoeConfig&, MoeExpertState<T>&);               \
  template void experts_backward_weight<T>(const MoeConfig&, MoeExpertState<T>&, MoeGrads<T>&);               \
  template Mat<T> dispatch_backward_unpack<T>(const MoeConfig&, const MoeTokenState<T>&,                      \
                                              const std::vector<Buffer>&);                                     \
  template Mat<T> route_backward_input<T>(const MoeConfig&, const MoeWeights<T>&, MoeTokenState<T>&,          \
                                          const Mat<T>*);                                                      \
  template void route_backward_weight<T>(const MoeConfig&, const MoeTokenState<T>&, MoeGrads<T>&);            \
  template nn::FfnInputGrad<T> shared_expert_backward_input<T>(const MoeConfig&, const MoeWeights<T>&,        \
                                                               const nn::FfnSaved<T>&, const Mat<T>&);         \
  template void shared_expert_backward_weight<T>(const MoeConfig&, const nn::FfnSaved<T>&,                    \
                                                 const nn::FfnInputGrad<T>&, const Mat<T>&, MoeGrads<T>&);     \
  template Mat<T> moe_forward_local<T>(const MoeConfig&, const MoeWeights<T>&, const Mat<T>&,                 \
                                       MoeLocalState<T>*, const Routing*);                                     \
  template Mat<T> moe_backward_local<T>(const MoeConfig&, const MoeWeights<T>&, MoeLocalState<T>&,            \
                                        const Mat<T>&, MoeGrads<T>&, const Mat<T>*);
TANDEM_MOE_LAYER(float)
TANDEM_MOE_LAYER(double)
#undef TANDEM_MOE_LAYER

}  // namespace tandem::moe
