// The executor's numeric vocabulary, one definition for every backend: how a GEMM rounds
// (Numerics) and how an MoE transfer encodes its rows (Wire). Plain C++17 and free of Eigen and
// CUDA, so the CPU reference (exec/ops), the CUDA twins (exec/ops/*/*_cuda.*, compiled by nvcc)
// and the runtime name the same types.
#pragma once

#include <cstdint>

namespace tandem::spec {

enum class Numerics {
  exact,  // GEMMs in T with a fixed summation order (the FP32 / FP64 reference)
  bf16,   // GEMM inputs rounded to BF16, FP32 accumulation, output rounded to BF16 (T = float)
  fp8,    // DeepSeek-V3's recipe: 1x128 activations, 128x128 weights, E4M3, promotion (T = float)
};

// An MoE all-to-all's wire format (exec/ops/moe_layer/dispatch_plan.h: the bytes of each).
enum class Wire : uint32_t {
  exact = 0,  // T's own bytes
  bf16 = 1,   // BF16, 2 bytes an element
  fp8 = 2,    // E4M3 + FP32 1x128 power-of-two scales
};

inline constexpr int kSegmentAlign = 128;  // expert segments are padded to a multiple of this

}  // namespace tandem::spec
