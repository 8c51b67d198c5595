// Helpers of the executor's tensor tests (exec/ops, exec/blocks): seeded random tensors, bitwise
// comparison and central finite differences.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <type_traits>

#include "common/signed_index.h"
#include "exec/ops/tensor.h"

namespace tandem::exec_test {

template <class T = double>
nn::Mat<T> random_mat(int64_t rows, int64_t cols, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  nn::Mat<T> m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(d(rng));
  return m;
}

// Same shape and the same bytes (so +0 and -0 differ, as do NaN payloads).
template <class A, class B>
bool bit_equal(const A& a, const B& b) {
  static_assert(std::is_same_v<std::decay_t<decltype(a.data()[0])>, std::decay_t<decltype(b.data()[0])>>);
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  if (a.size() == 0) return true;
  return std::memcmp(a.data(), b.data(), idx(a.size()) * sizeof(a.data()[0])) == 0;
}

// Central finite differences of loss() with respect to every element of p (perturbed in place).
inline nn::Mat<double> finite_diff(nn::Mat<double>& p, const std::function<double()>& loss, double h = 1e-6) {
  nn::Mat<double> g(p.rows(), p.cols());
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
inline double rel_err(const nn::Mat<double>& a, const nn::Mat<double>& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

// <y, R>: a scalar loss whose gradient at y is R.
inline double dot(const nn::Mat<double>& y, const nn::Mat<double>& r) { return y.cwiseProduct(r).sum(); }

}  // namespace tandem::exec_test
