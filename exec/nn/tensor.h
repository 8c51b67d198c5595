// Tensors of the CPU executor: row-major Eigen matrices, [rows = tokens, cols = features].
//
// Every op is a plain function templated on the scalar: double for finite-difference checks,
// float for training. `Numerics` says how the op's GEMMs round; the rest of an op always runs in T.
#pragma once

#include <Eigen/Dense>

namespace tandem::nn {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

enum class Numerics {
  exact,  // GEMMs in T with a fixed summation order (the FP32 / FP64 reference)
  bf16,   // GEMM inputs rounded to BF16, FP32 accumulation, output rounded to BF16 (T = float)
  fp8,    // DeepSeek-V3's recipe: 1x128 activations, 128x128 weights, E4M3, promotion (T = float)
};

}  // namespace tandem::nn
