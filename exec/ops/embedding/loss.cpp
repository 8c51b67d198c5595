#include "exec/ops/embedding/loss.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace tandem::nn {

template <class T>
CrossEntropy<T> cross_entropy(const Mat<T>& logits, std::span<const int32_t> targets,
                              double scale) {
  const int64_t M = logits.rows(), V = logits.cols();
  if (static_cast<int64_t>(targets.size()) != M)
    throw std::invalid_argument("cross_entropy: " + std::to_string(targets.size()) +
                                " targets for " + std::to_string(M) + " rows");
  CrossEntropy<T> r;
  r.dlogits = Mat<T>::Zero(M, V);
  std::vector<double> e(V);
  for (int64_t i = 0; i < M; ++i) {
    const int32_t t = targets[i];
    if (t < 0) continue;
    if (t >= V) throw std::out_of_range("cross_entropy: target " + std::to_string(t));
    const T* li = logits.data() + i * V;
    double mx = -INFINITY;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, static_cast<double>(li[j]));
    double sum = 0;
    for (int64_t j = 0; j < V; ++j) {
      e[j] = std::exp(static_cast<double>(li[j]) - mx);
      sum += e[j];
    }
    const double lse = mx + std::log(sum);
    r.loss += scale * (lse - static_cast<double>(li[t]));
    T* di = r.dlogits.data() + i * V;
    for (int64_t j = 0; j < V; ++j) {
      const double p = e[j] / sum;
      di[j] = static_cast<T>(scale * (j == t ? p - 1.0 : p));
    }
  }
  return r;
}

template CrossEntropy<float> cross_entropy<float>(const Mat<float>&, std::span<const int32_t>,
                                                  double);
template CrossEntropy<double> cross_entropy<double>(const Mat<double>&, std::span<const int32_t>,
                                                    double);

}  // namespace tandem::nn
