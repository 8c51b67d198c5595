#include "exec/ops/mtp/mtp.h"

#include <stdexcept>

#include "exec/ops/linear/linear.h"
#include "exec/ops/rmsnorm/rmsnorm.h"

namespace tandem::nn {
namespace {

template <class T>
Mat<T> concat_normed(const MtpProjWeights<T>& w, const Mat<T>& h, const Mat<T>& emb, double eps) {
  if (h.rows() != emb.rows() || h.cols() != emb.cols())
    throw std::invalid_argument("mtp: h and emb shapes differ");
  Mat<T> cat(h.rows(), 2 * h.cols());
  cat.leftCols(h.cols()) = rmsnorm_forward(emb, w.enorm, eps);
  cat.rightCols(h.cols()) = rmsnorm_forward(h, w.hnorm, eps);
  return cat;
}

}  // namespace

template <class T>
Mat<T> mtp_input_forward(const MtpProjWeights<T>& w, const Mat<T>& h, const Mat<T>& emb,
                         double eps, Numerics n, std::type_identity_t<MtpSaved<T>>* saved) {
  Mat<T> out = linear_forward(concat_normed(w, h, emb, eps), w.eh_proj, n);
  if (saved) {
    saved->h = h;
    saved->emb = emb;
  }
  return out;
}

template <class T>
MtpInputGrad<T> mtp_input_backward_input(const MtpProjWeights<T>& w, const MtpSaved<T>& s,
                                         const Mat<T>& dy, double eps, Numerics n) {
  MtpInputGrad<T> g;
  const int64_t H = s.h.cols();
  g.cat = concat_normed(w, s.h, s.emb, eps);
  g.d_cat = linear_backward_input(dy, w.eh_proj, n);
  g.d_emb = rmsnorm_backward_input(s.emb, w.enorm, eps, Mat<T>(g.d_cat.leftCols(H)));
  g.dh = rmsnorm_backward_input(s.h, w.hnorm, eps, Mat<T>(g.d_cat.rightCols(H)));
  return g;
}

template <class T>
void mtp_input_backward_weight(const MtpSaved<T>& s, const MtpInputGrad<T>& g, const Mat<T>& dy,
                               double eps, Numerics n, MtpProjWeights<T>& grads) {
  const int64_t H = s.h.cols();
  linear_backward_weight(dy, g.cat, n, grads.eh_proj);
  rmsnorm_backward_weight(s.emb, eps, Mat<T>(g.d_cat.leftCols(H)), grads.enorm);
  rmsnorm_backward_weight(s.h, eps, Mat<T>(g.d_cat.rightCols(H)), grads.hnorm);
}

#define TANDEM_NN_MTP(T)                                                                        \
  template Mat<T> mtp_input_forward<T>(const MtpProjWeights<T>&, const Mat<T>&, const Mat<T>&, \
                                       double, Numerics, MtpSaved<T>*);                         \
  template MtpInputGrad<T> mtp_input_backward_input<T>(const MtpProjWeights<T>&,               \
                                                       const MtpSaved<T>&, const Mat<T>&,      \
                                                       double, Numerics);                      \
  template void mtp_input_backward_weight<T>(const MtpSaved<T>&, const MtpInputGrad<T>&,       \
                                             const Mat<T>&, double, Numerics,                  \
                                             MtpProjWeights<T>&);
TANDEM_NN_MTP(float)
TANDEM_NN_MTP(double)
#undef TANDEM_NN_MTP

}  // namespace tandem::nn
