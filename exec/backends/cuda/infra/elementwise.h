// Exact elementwise kernels the CUDA backend needs (sums of gradients, scaling, BF16 rounding):
// bit-identical to the CPU (one IEEE operation each; exec/fp8/bf16.h's bit recipe). Host launchers
// on device pointers, asynchronous on `stream`, each kernel's launch checked (CudaError); empty
// shapes are no-ops; negative sizes throw std::invalid_argument. FP32 row-major tensors, like the
// CPU's Mat<float>. The CPU is built with -ffp-contract=off and no FMA; the device code spells
// every rounding with an explicit _rn intrinsic so nvcc cannot contract either.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// out = a + b (out may alias a or b).
void add(const float* a, const float* b, std::size_t n, float* out, cudaStream_t stream);
// acc += x.
void add_inplace(float* acc, const float* x, std::size_t n, cudaStream_t stream);
// out = x · s (out may alias x).
void scale(const float* x, std::size_t n, float s, float* out, cudaStream_t stream);
// out = x rounded to BF16 and kept as FP32 (out may alias x): exec/fp8/bf16.h round_to_bf16 bit
// for bit — RNE by the same integer recipe; NaN keeps sign and top payload with the quiet bit set
// (not CUDA's canonical NaN, which is why this does not use __float2bfloat16_rn).
void round_to_bf16(const float* x, std::size_t n, float* out, cudaStream_t stream);

}  // namespace tandem::cuda
