// The input of a multi-token-prediction module (DeepSeek-V3 §2.2, h'_i = M·[RMSNorm(h_i); RMSNorm(Emb(t_{i+k}))]):
//   h' = eh_proj · [ enorm(emb) ; hnorm(h) ]      eh_proj [hidden, 2·hidden]
// h: the previous depth's hidden state at position i (for depth 1 the main model's last hidden
// state, before its final norm); emb: the shared embedding of token i+k (the caller looks it up and
// scatters d_emb back with embedding_backward).
// Column order of eh_proj: the released DeepSeek-V3 checkpoint's (and vLLM's / HF's MTP code):
// columns [0, hidden) multiply enorm(emb), [hidden, 2·hidden) multiply hnorm(h). The paper writes
// the concatenation h first; the two differ only by a permutation of eh_proj's columns, and this
// order keeps the HF tensor name "eh_proj.weight" loadable as is.
// The MTP module's transformer block and its head (own final norm, shared proj) are composed by
// the executor from attention.h / ffn.h / exec/ops / head.h.
// Numerics: eh_proj follows `Numerics` (linear.h); norms in T, recomputed in backward.
#pragma once

#include <type_traits>

#include "exec/ops/tensor.h"

namespace tandem::nn {

template <class T>
struct MtpProjWeights {
  Vec<T> hnorm;    // [hidden]
  Vec<T> enorm;    // [hidden]
  Mat<T> eh_proj;  // [hidden, 2·hidden]
};

template <class T>
struct MtpSaved {
  Mat<T> h, emb;  // [M, hidden] each
};

template <class T>
struct MtpInputGrad {
  Mat<T> dh, d_emb;  // [M, hidden]
  Mat<T> cat;        // [M, 2·hidden]  [enorm(emb) | hnorm(h)], recomputed: eh_proj's input
  Mat<T> d_cat;      // [M, 2·hidden]  gradient at cat
};

template <class T>
Mat<T> mtp_input_forward(const MtpProjWeights<T>& w, const Mat<T>& h, const Mat<T>& emb,
                         double eps, Numerics n, std::type_identity_t<MtpSaved<T>>* saved);
template <class T>
MtpInputGrad<T> mtp_input_backward_input(const MtpProjWeights<T>& w, const MtpSaved<T>& saved,
                                         const Mat<T>& dy, double eps, Numerics n);
// grads.hnorm / enorm / eh_proj += … (caller zeroes).
template <class T>
void mtp_input_backward_weight(const MtpSaved<T>& saved, const MtpInputGrad<T>& g,
                               const Mat<T>& dy, double eps, Numerics n,
                               MtpProjWeights<T>& grads);

}  // namespace tandem::nn
