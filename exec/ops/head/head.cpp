#include "exec/ops/head/head.h"

#include "exec/ops/linear/linear.h"
#include "exec/ops/rmsnorm/rmsnorm.h"

namespace tandem::nn {
namespace {

Numerics head_numerics(Numerics n) { return n == Numerics::fp8 ? Numerics::bf16 : n; }

}  // namespace

template <class T>
Mat<T> head_forward(const Vec<T>& norm, const Mat<T>& proj, const Mat<T>& h, double eps,
                    Numerics n, std::type_identity_t<HeadSaved<T>>* saved) {
  Mat<T> logits = linear_forward(rmsnorm_forward(h, norm, eps), proj, head_numerics(n));
  if (saved) saved->h = h;
  return logits;
}

template <class T>
HeadInputGrad<T> head_backward_input(const Vec<T>& norm, const Mat<T>& proj,
                                     const HeadSaved<T>& saved, const Mat<T>& dlogits,
                                     double eps, Numerics n) {
  HeadInputGrad<T> g;
  g.normed = rmsnorm_forward(saved.h, norm, eps);
  g.d_normed = linear_backward_input(dlogits, proj, head_numerics(n));
  g.dh = rmsnorm_backward_input(saved.h, norm, eps, g.d_normed);
  return g;
}

template <class T>
void head_backward_weight(const HeadSaved<T>& saved, const HeadInputGrad<T>& g,
                          const Mat<T>& dlogits, double eps, Numerics n, Vec<T>& d_norm,
                          Mat<T>& d_proj) {
  linear_backward_weight(dlogits, g.normed, head_numerics(n), d_proj);
  rmsnorm_backward_weight(saved.h, eps, g.d_normed, d_norm);
}

#define TANDEM_NN_HEAD(T)                                                                     \
  template Mat<T> head_forward<T>(const Vec<T>&, const Mat<T>&, const Mat<T>&, double,        \
                                  Numerics, HeadSaved<T>*);                                   \
  template HeadInputGrad<T> head_backward_input<T>(const Vec<T>&, const Mat<T>&,              \
                                                   const HeadSaved<T>&, const Mat<T>&, double, \
                                                   Numerics);                                 \
  template void head_backward_weight<T>(const HeadSaved<T>&, const HeadInputGrad<T>&,         \
                                        const Mat<T>&, double, Numerics, Vec<T>&, Mat<T>&);
TANDEM_NN_HEAD(float)
TANDEM_NN_HEAD(double)
#undef TANDEM_NN_HEAD

}  // namespace tandem::nn
