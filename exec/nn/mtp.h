// The input of a multi-token-prediction module (DeepSeek-V3 §2.2):
//   h' = eh_proj · [ hnorm(h) ; enorm(emb) ]      eh_proj [hidden, 2·hidden]
// h: the previous depth's hidden state at position i (for depth 1 the main model's last hidden
// state, before its final norm); emb: the shared embedding of token i+k (the caller looks it up and
// scatters d_emb back with embedding_backward). The concatenation order is the paper's (h first);
// DeepSeek-V3's released checkpoint (and vLLM) concatenate [enorm(emb) ; hnorm(h)], so loading one
// swaps eh_proj's two column halves. The MTP module's transformer block and its head (own final
// norm, shared proj) are composed by the executor from attention.h / ffn.h / exec/moe / head.h.
// Numerics: eh_proj follows `Numerics` (linear.h); norms in T, recomputed in backward.
#pragma once

#include <type_traits>

#include "exec/nn/tensor.h"

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
  Mat<T> cat;        // [M, 2·hidden]  [hnorm(h) | enorm(emb)], recomputed: eh_proj's input
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
