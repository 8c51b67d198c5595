#include "exec/ops/adamw/adamw.h"

#include <cmath>
#include <stdexcept>

#include "exec/ops/rounding.h"

namespace tandem::nn {

void adamw_step(std::span<float> params, std::span<const float> grads, std::span<float> m,
                std::span<float> v, int64_t step, const AdamWConfig& c) {
  if (grads.size() != params.size() || m.size() != params.size() || v.size() != params.size())
    throw std::invalid_argument("adamw_step: spans of different lengths");
  if (step < 1) throw std::invalid_argument("adamw_step: step counts from 1");
  const double t = static_cast<double>(step);
  const float b1 = static_cast<float>(c.beta1), b2 = static_cast<float>(c.beta2);
  const float one_m_b1 = static_cast<float>(1.0 - c.beta1), one_m_b2 = static_cast<float>(1.0 - c.beta2);
  const float decay = static_cast<float>(1.0 - c.lr * c.weight_decay);
  const float step_size = static_cast<float>(c.lr / (1.0 - std::pow(c.beta1, t)));
  const float sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(c.beta2, t)));
  const float eps = static_cast<float>(c.eps);
  for (size_t i = 0; i < params.size(); ++i) {
    const float g = grads[i];
    float mi = b1 * m[i] + one_m_b1 * g;
    float vi = b2 * v[i] + one_m_b2 * (g * g);
    if (c.bf16_moments) {
      mi = bf16_round(mi);
      vi = bf16_round(vi);
    }
    m[i] = mi;
    v[i] = vi;
    const float p = params[i] * decay;
    params[i] = p - step_size * (mi / (std::sqrt(vi) / sqrt_bc2 + eps));
  }
}

double sum_of_squares(std::span<const float> g) {
  double s = 0;
  for (const float x : g) s += static_cast<double>(x) * static_cast<double>(x);
  return s;
}

}  // namespace tandem::nn
