// Helpers of the dense ops' tests: the shared tensor-test helpers (tests/exec/tensor_test_util.h).
#pragma once

#include "tests/exec/tensor_test_util.h"

namespace tandem::nn::test {

using exec_test::bit_equal;
using exec_test::dot;
using exec_test::finite_diff;
using exec_test::rel_err;

inline Mat<double> random_mat(int64_t rows, int64_t cols, uint64_t seed, double scale = 1.0) {
  return exec_test::random_mat<double>(rows, cols, seed, scale);
}

}  // namespace tandem::nn::test
