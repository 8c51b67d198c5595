// Helpers of the exec/moe tests: seeded tensors, bitwise comparison, finite differences and a
// simulated all-to-all (buffers moved between simulated EP members).
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "exec/moe/dispatch_plan.h"
#include "exec/nn/tensor.h"

namespace tandem::moe::test {

template <class T = double>
Mat<T> random_mat(int64_t rows, int64_t cols, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  Mat<T> m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(d(rng));
  return m;
}

// Same shape and the same bytes (so +0 and -0 differ, as do NaN payloads).
template <class A, class B>
bool bit_equal(const A& a, const B& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  if (a.size() == 0) return true;
  return std::memcmp(a.data(), b.data(), static_cast<size_t>(a.size()) * sizeof(a.data()[0])) == 0;
}

// Central finite differences of loss() w.r.t. every element of p (perturbed in place).
inline Mat<double> finite_diff(Mat<double>& p, const std::function<double()>& loss, double h = 1e-6) {
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

inline double rel_err(const Mat<double>& a, const Mat<double>& b) {
  return (a - b).norm() / std::max(b.norm(), 1e-300);
}

inline double dot(const Mat<double>& a, const Mat<double>& b) { return a.cwiseProduct(b).sum(); }

// The all-to-all-v: send[s][d] (member s's buffer for d) → recv[d][s].
inline std::vector<std::vector<Buffer>> all_to_all(std::vector<std::vector<Buffer>> send) {
  const size_t ep = send.size();
  std::vector<std::vector<Buffer>> recv(ep, std::vector<Buffer>(ep));
  for (size_t s = 0; s < ep; ++s)
    for (size_t d = 0; d < ep; ++d) recv[d][s] = std::move(send[s][d]);
  return recv;
}

}  // namespace tandem::moe::test
