// Test data and FP64 references for the quantisation and GEMM tests.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "common/signed_index.h"

namespace tandem::fp8::testing {

// Row-major rows x cols, N(0, 1), with a fraction of outliers scaled by outlier_scale (what makes
// fine-grained scaling necessary: one outlier sets its whole block's scale).
inline std::vector<float> random_matrix(int rows, int cols, uint32_t seed,
                                        double outlier_fraction = 0.0, float outlier_scale = 30.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<float> m(idx(rows) * cols);
  for (float& v : m) {
    v = normal(rng);
    if (uniform(rng) < outlier_fraction) v *= outlier_scale;
  }
  return m;
}

inline std::vector<float> transposed(const std::vector<float>& x, int rows, int cols) {
  std::vector<float> t(x.size());
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) {
      t[idx(c) * rows + r] = x[idx(r) * cols + c];
    }
  }
  return t;
}

// d[M,N] = a[M,K] · b[N,K]ᵀ in double.
inline std::vector<double> gemm_nt_fp64(const float* a, const float* b, int M, int N, int K) {
  std::vector<double> d(idx(M) * N, 0.0);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double s = 0.0;
      for (int k = 0; k < K; ++k) {
        s += static_cast<double>(a[idx(m) * K + k]) * b[idx(n) * K + k];
      }
      d[idx(m) * N + n] = s;
    }
  }
  return d;
}

// ||d - ref||_2 / ||ref||_2
inline double rel_l2(const std::vector<float>& d, const std::vector<double>& ref) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < d.size(); ++i) {
    num += (d[i] - ref[i]) * (d[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

}  // namespace tandem::fp8::testing
