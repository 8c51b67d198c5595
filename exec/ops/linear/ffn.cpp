#include "exec/ops/linear/ffn.h"

#include <cmath>
#include <stdexcept>

#include "exec/ops/linear/linear.h"

namespace tandem::nn {
namespace {

template <class T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// silu(g) * u, element-wise.
template <class T>
Mat<T> swiglu(const Mat<T>& g, const Mat<T>& u) {
  Mat<T> s(g.rows(), g.cols());
  const int64_t n = g.size();
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g.data()[i];
    s.data()[i] = gi * sigmoid(gi) * u.data()[i];
  }
  return s;
}

}  // namespace

template <class T>
Mat<T> ffn_forward(const FfnWeights<T>& w, const Mat<T>& x, Numerics n, FfnSaved<T>* saved) {
  Mat<T> g = linear_forward(x, w.gate, n);
  Mat<T> u = linear_forward(x, w.up, n);
  Mat<T> y = linear_forward(swiglu(g, u), w.down, n);
  if (saved) {
    saved->x = x;
    saved->gate_out = std::move(g);
    saved->up_out = std::move(u);
  }
  return y;
}

template <class T>
FfnInputGrad<T> ffn_backward_input(const FfnWeights<T>& w, const FfnSaved<T>& saved,
                                   const Mat<T>& dy, Numerics n) {
  if (dy.rows() != saved.x.rows())
    throw std::invalid_argument("ffn_backward_input: dy rows differ from the saved input's");
  FfnInputGrad<T> r;
  const Mat<T>& g = saved.gate_out;
  const Mat<T>& u = saved.up_out;
  const Mat<T> ds = linear_backward_input(dy, w.down, n);  // [M, inter]
  r.swiglu_out.resize(g.rows(), g.cols());
  r.d_gate_out.resize(g.rows(), g.cols());
  r.d_up_out.resize(g.rows(), g.cols());
  const int64_t cnt = g.size();
  for (int64_t i = 0; i < cnt; ++i) {
    const T gi = g.data()[i], ui = u.data()[i], dsi = ds.data()[i];
    const T sg = sigmoid(gi);
    const T silu = gi * sg;
    r.swiglu_out.data()[i] = silu * ui;
    r.d_up_out.data()[i] = dsi * silu;
    r.d_gate_out.data()[i] = dsi * ui * (sg * (T(1) + gi * (T(1) - sg)));  // silu'(g)
  }
  r.dx = linear_backward_input(r.d_gate_out, w.gate, n);
  r.dx += linear_backward_input(r.d_up_out, w.up, n);
  return r;
}

template <class T>
void ffn_backward_weight(const FfnSaved<T>& saved, const FfnInputGrad<T>& g, const Mat<T>& dy,
                         Numerics n, FfnWeights<T>& grads) {
  linear_backward_weight(dy, g.swiglu_out, n, grads.down);
  linear_backward_weight(g.d_gate_out, saved.x, n, grads.gate);
  linear_backward_weight(g.d_up_out, saved.x, n, grads.up);
}

#define TANDEM_NN_FFN(T)                                                                        \
  template Mat<T> ffn_forward<T>(const FfnWeights<T>&, const Mat<T>&, Numerics, FfnSaved<T>*);  \
  template FfnInputGrad<T> ffn_backward_input<T>(const FfnWeights<T>&, const FfnSaved<T>&,      \
                                                 const Mat<T>&, Numerics);                      \
  template void ffn_backward_weight<T>(const FfnSaved<T>&, const FfnInputGrad<T>&, const Mat<T>&, \
                                       Numerics, FfnWeights<T>&);
TANDEM_NN_FFN(float)
TANDEM_NN_FFN(double)
#undef TANDEM_NN_FFN

}  // namespace tandem::nn
