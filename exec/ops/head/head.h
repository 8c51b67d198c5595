// The output head: logits = proj(RMSNorm(h)), proj [vocab, hidden]. The main model and each MTP
// module have their own final norm and share proj, so the two are passed separately.
// Numerics: DeepSeek-V3 keeps the output head out of FP8, so Numerics::fp8 runs this GEMM as bf16;
// exact and bf16 as in linear.h. The RMSNorm output is recomputed in backward (only h is saved).
#pragma once

#include <type_traits>

#include "exec/ops/tensor.h"

namespace tandem::nn {

template <class T>
struct HeadSaved {
  Mat<T> h;  // [M, hidden] the head's input (before the final norm)
};

template <class T>
struct HeadInputGrad {
  Mat<T> dh;        // [M, hidden]
  Mat<T> normed;    // [M, hidden] RMSNorm(h), recomputed: proj's weight-grad input
  Mat<T> d_normed;  // [M, hidden] gradient at the norm's output
};

// logits [M, vocab]. Fills *saved when non-null.
template <class T>
Mat<T> head_forward(const Vec<T>& norm, const Mat<T>& proj, const Mat<T>& h, double eps,
                    Numerics n, std::type_identity_t<HeadSaved<T>>* saved);
template <class T>
HeadInputGrad<T> head_backward_input(const Vec<T>& norm, const Mat<T>& proj,
                                     const HeadSaved<T>& saved, const Mat<T>& dlogits,
                                     double eps, Numerics n);
// d_norm += …, d_proj += dlogitsᵀ · RMSNorm(h) (caller zeroes).
template <class T>
void head_backward_weight(const HeadSaved<T>& saved, const HeadInputGrad<T>& g,
                          const Mat<T>& dlogits, double eps, Numerics n, Vec<T>& d_norm,
                          Mat<T>& d_proj);

}  // namespace tandem::nn
