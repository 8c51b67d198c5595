// rel-L2 comparisons of a device result with the CPU's for the GPU checks (each prints its error
// and fails the check above `tol`), and the small random vectors the checks start from.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "exec/ops/tensor.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/gpu_check.h"

namespace tandem::gputest {

inline void compare(const std::string& tag, const std::string& what, const std::vector<double>& got,
             const std::vector<double>& want, double tol) {
  if (got.size() != want.size()) {
    expect(false, tag + ": " + what + " has " + std::to_string(got.size()) + " elements, want " +
                      std::to_string(want.size()));
    return;
  }
  const double e = rel_l2(got, want);
  std::printf("  %-10s %-10s rel-L2 %.2e\n", tag.c_str(), what.c_str(), e);
  char buf[64];
  std::snprintf(buf, sizeof buf, " rel-L2 %.3e > %.0e", e, tol);
  expect(e <= tol, tag + ": " + what + buf);
}
inline std::vector<double> to_double(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }
inline void compare(const std::string& tag, const std::string& what, const std::vector<float>& got,
             const std::vector<float>& want, double tol) {
  compare(tag, what, to_double(got), to_double(want), tol);
}
// got − start vs want − start in FP64: an accumulated gradient's increment.
inline void compare_increment(const std::string& tag, const std::string& what, const std::vector<float>& got,
                       const std::vector<float>& want, const std::vector<float>& start, double tol) {
  std::vector<double> g(got.size()), w(want.size());
  for (std::size_t i = 0; i < got.size() && i < start.size(); ++i)
    g[i] = static_cast<double>(got[i]) - static_cast<double>(start[i]);
  for (std::size_t i = 0; i < want.size() && i < start.size(); ++i)
    w[i] = static_cast<double>(want[i]) - static_cast<double>(start[i]);
  compare(tag, what, g, w, tol);
}

inline nn::Vec<float> norm_weight(int n, uint64_t seed) {
  const nn::Mat<float> r = exec_test::random_mat<float>(n, 1, seed, 0.1);
  nn::Vec<float> v(n);
  for (int i = 0; i < n; ++i) v(i) = 1.0f + r(i, 0);
  return v;
}

inline nn::Vec<float> small_vec(int n, uint64_t seed, double scale) {
  const nn::Mat<float> r = exec_test::random_mat<float>(n, 1, seed, scale);
  nn::Vec<float> v(n);
  for (int i = 0; i < n; ++i) v(i) = r(i, 0);
  return v;
}

}  // namespace tandem::gputest
