// RMSNorm on the device: the twin of rmsnorm.h in FP32, within a tolerance of it (one block per
// row; the sum of squares is a tree reduction, not the CPU's sequential sum). Launchers on device
// pointers, asynchronous on `stream`, each launch checked (CudaError); empty shapes are no-ops.
// (The weight gradient accumulated in the CPU's row order, for MLA's norms, is
// rmsnorm_weight_accumulate in exec/ops/attention/attention_cuda.h.)
#pragma once

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// RMSNorm (exec/ops/rmsnorm/rmsnorm.h, in FP32): r_i = 1 / sqrt(mean_j x[i,j]^2 + eps), y = w * (x * r).
// One block per row; the sum of squares is a tree reduction, so not bit-identical to the CPU's
// sequential sum: compare with a tolerance. inv_rms (nullable) receives r_i per row.
void rmsnorm_forward(const float* x, const float* w, int rows, int cols, float eps, float* y, float* inv_rms,
                     cudaStream_t stream);
// dx = r (g - x̂ mean_k(g_k x̂_k)), g = w * dy, x̂ = x r (recomputes r, as DeepSeek-V3 does).
void rmsnorm_backward_input(const float* x, const float* w, const float* dy, int rows, int cols, float eps,
                            float* dx, cudaStream_t stream);
// dw[j] = sum over rows i, in increasing i, of dy[i,j] * (x[i,j] * inv_rms[i]) (overwrites dw).
void rmsnorm_backward_weight(const float* x, const float* dy, const float* inv_rms, int rows, int cols, float* dw,
                             cudaStream_t stream);

}  // namespace tandem::cuda
