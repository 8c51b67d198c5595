// SwiGLU MLP — the dense FFN, the shared expert and each routed expert:
//   y = down( silu(gate(x)) * up(x) )
// gate, up: [inter, hidden]; down: [hidden, inter] (PyTorch layout, see linear.h).
// The three GEMMs follow `Numerics` (linear.h); SiLU and the product run in T.
// Forward keeps x, gate(x) and up(x); the SwiGLU output is recomputed in backward (as DeepSeek-V3
// does) and handed to the weight pass in FfnInputGrad.
#pragma once

#include <cstddef>

#include "exec/ops/tensor.h"

namespace tandem::nn {

template <class T>
struct FfnWeights {
  Mat<T> gate, up, down;  // gate, up: [inter, hidden]; down: [hidden, inter]
};

template <class T>
struct FfnSaved {
  Mat<T> x, gate_out, up_out;  // [M, hidden], [M, inter], [M, inter]
};

template <class T>
struct FfnInputGrad {
  Mat<T> dx;          // [M, hidden]
  Mat<T> d_gate_out;  // [M, inter]  gradient at gate(x)
  Mat<T> d_up_out;    // [M, inter]  gradient at up(x)
  Mat<T> swiglu_out;  // [M, inter]  silu(gate(x)) * up(x), recomputed (down's weight-grad input)
};

// Forward; fills *saved when saved != nullptr.
template <class T>
Mat<T> ffn_forward(const FfnWeights<T>& w, const Mat<T>& x, Numerics n, FfnSaved<T>* saved);
// Forward without saving (a plain nullptr does not deduce T).
template <class T>
Mat<T> ffn_forward(const FfnWeights<T>& w, const Mat<T>& x, Numerics n, std::nullptr_t) {
  return ffn_forward(w, x, n, static_cast<FfnSaved<T>*>(nullptr));
}
// Backward for the input: dx plus what the weight pass needs.
template <class T>
FfnInputGrad<T> ffn_backward_input(const FfnWeights<T>& w, const FfnSaved<T>& saved,
                                   const Mat<T>& dy, Numerics n);
// Backward for the weights: grads.gate/up/down += ... (shapes as the weights; caller zeroes).
template <class T>
void ffn_backward_weight(const FfnSaved<T>& saved, const FfnInputGrad<T>& g, const Mat<T>& dy,
                         Numerics n, FfnWeights<T>& grads);

}  // namespace tandem::nn
