// Tensors of the CPU executor: row-major Eigen matrices, [rows = tokens, cols = features].
//
// Every op is a plain function templated on the scalar: double for finite-difference checks,
// float for training. `Numerics` says how the op's GEMMs round; the rest of an op always runs in T.
#pragma once

#include <Eigen/Dense>

#include "exec/spec/numerics.h"

namespace tandem::nn {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

using spec::Numerics;  // exec/spec/numerics.h: one definition for every backend

}  // namespace tandem::nn
