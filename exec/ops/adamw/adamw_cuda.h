// AdamW on the device: the twin of adamw.h, bit-identical to it (the same FP32 operations in the
// same order, IEEE sqrt and division; the bias-correction scalars come from the host). Host
// launchers on device pointers, asynchronous on `stream`, each kernel's launch checked (CudaError);
// empty shapes are no-ops; negative sizes throw std::invalid_argument. FP32 row-major tensors, like
// the CPU's Mat<float>. The CPU is built with -ffp-contract=off and no FMA; the device code spells
// every rounding with an explicit _rn intrinsic so nvcc cannot contract either.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// The per-step FP32 scalars of exec/ops/adamw/adamw.cpp, computed on the host exactly as the CPU does.
struct AdamWScalars {
  float b1 = 0, b2 = 0, one_m_b1 = 0, one_m_b2 = 0;
  float decay = 1;      // 1 − lr·wd
  float step_size = 0;  // lr / (1 − β1^t)
  float sqrt_bc2 = 1;   // sqrt(1 − β2^t)
  float eps = 0;
  bool bf16_moments = false;
};

// The scalars for step t (counting from 1; std::invalid_argument otherwise): the same double
// expressions and std::pow as exec/ops/adamw/adamw.cpp, so the same FP32 values bit for bit (host code
// in adamw_cuda.cu; the one product-difference, 1 − lr·wd, must not become an FMA: the x86-64
// baseline target has none, and the CPU ops are built with -ffp-contract=off).
AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, bool bf16_moments,
                           int64_t step);
// From an nn::AdamWConfig (a template so this header stays C++17 and free of the CPU op; any struct
// with lr, beta1, beta2, eps, weight_decay, bf16_moments does).
template <class Config>
AdamWScalars adamw_scalars(const Config& c, int64_t step) {
  return adamw_scalars(c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, c.bf16_moments, step);
}

// One AdamW update of a flat FP32 shard of n elements (params, grads, m, v: device arrays; m, v
// zero before step 1), per element exactly as exec/ops/adamw/adamw.cpp:
//   m ← b1·m + (1−b1)·g;  v ← b2·v + (1−b2)·(g·g);  (BF16-rounded if bf16_moments)
//   p ← p·decay − step_size · (m / (sqrt(v) / sqrt_bc2 + eps))
// Bit-identical to adamw_step (elements are independent, so the split into spans is irrelevant).
void adamw_step(float* params, const float* grads, float* m, float* v, std::size_t n, const AdamWScalars& s,
                cudaStream_t stream);

}  // namespace tandem::cuda
