// AdamW on the device (adamw_cuda.h).
#include "exec/ops/adamw/adamw_cuda.h"

#include <cmath>
#include <stdexcept>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::bf16_round;
using device::grid_for;

using device::require;

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                             float* __restrict__ v, std::size_t n, AdamWScalars s) {
  for (std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x) {
    const float g = grads[i];
    float mi = __fadd_rn(__fmul_rn(s.b1, m[i]), __fmul_rn(s.one_m_b1, g));
    float vi = __fadd_rn(__fmul_rn(s.b2, v[i]), __fmul_rn(s.one_m_b2, __fmul_rn(g, g)));
    if (s.bf16_moments) {
      mi = bf16_round(mi);
      vi = bf16_round(vi);
    }
    m[i] = mi;
    v[i] = vi;
    const float p = __fmul_rn(params[i], s.decay);
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.sqrt_bc2), s.eps);
    params[i] = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  }
}

}  // namespace

AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, bool bf16_moments,
                           int64_t step) {
  require(step >= 1, "adamw_scalars: step counts from 1");
  const double t = static_cast<double>(step);
  AdamWScalars s;
  s.b1 = static_cast<float>(beta1);
  s.b2 = static_cast<float>(beta2);
  s.one_m_b1 = static_cast<float>(1.0 - beta1);
  s.one_m_b2 = static_cast<float>(1.0 - beta2);
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
  s.sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = static_cast<float>(eps);
  s.bf16_moments = bf16_moments;
  return s;
}

void adamw_step(float* params, const float* grads, float* m, float* v, std::size_t n, const AdamWScalars& s,
                cudaStream_t stream) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n, 256), 256, 0, stream>>>(params, grads, m, v, n, s);
  check_launch("adamw_step");
}

}  // namespace tandem::cuda
