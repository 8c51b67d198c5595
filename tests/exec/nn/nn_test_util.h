// Helpers of the exec/nn tests: seeded random tensors and central finite differences.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <random>

#include "exec/nn/tensor.h"

namespace tandem::nn::test {

inline Mat<double> random_mat(int64_t rows, int64_t cols, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  Mat<double> m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = d(rng);
  return m;
}

// Central finite differences of loss() with respect to every element of p (perturbed in place).
inline Mat<double> finite_diff(Mat<double>& p, const std::function<double()>& loss,
                               double h = 1e-6) {
  Mat<double> g(p.rows(), p.cols());
  for (int64_t i = 0; i < p.size(); ++i) {
    const double v = p.data()[i];
    p.data()[i] = v + h;
    const double lp = loss();
    p.data()[i] = v - h;
    const double lm = loss();
    p.data()[i] = v;
    g.data()[i] = (lp - lm) / (2 * h);
  }
  return g;
}

// ‖a − b‖ / max(‖b‖, tiny): the relative error of an analytic gradient a against reference b.
inline double rel_err(const Mat<double>& a, const Mat<double>& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

// <y, R>: a scalar loss whose gradient at y is R.
inline double dot(const Mat<double>& y, const Mat<double>& r) { return y.cwiseProduct(r).sum(); }

inline bool bit_equal(const auto& a, const auto& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (int64_t i = 0; i < a.size(); ++i) {
    if (std::bit_cast<std::conditional_t<sizeof(a.data()[0]) == 8, uint64_t, uint32_t>>(a.data()[i]) !=
        std::bit_cast<std::conditional_t<sizeof(b.data()[0]) == 8, uint64_t, uint32_t>>(b.data()[i]))
      return false;
  }
  return true;
}

}  // namespace tandem::nn::test
