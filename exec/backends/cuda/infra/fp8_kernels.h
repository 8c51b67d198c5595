// The CUDA backend's FP8 quantisers (fp8_kernels.cu), the device twins of exec/fp8/quantize.h, and
// its benchmark data; host-callable launchers on device pointers.
//
// The quantisers mirror exec/fp8/quantize.h op by op and are bit-identical to it by construction:
//   amax   = max |x| over the block (max is exact, so the reduction order does not matter);
//            a block holding Inf/NaN gets factor = scale = 1, like the CPU's `Amax::finite`;
//   factor = 448 / amax by IEEE division (__fdiv_rn; the backend is never built with
//            --use_fast_math), FLT_MAX when that overflows; pow2: the exponent bits only;
//   scale  = amax / 448 (__fdiv_rn), or 1 / factor (__frcp_rn, exact for a power of two);
//   code   = __nv_cvt_float_to_fp8(__fmul_rn(x, factor), __NV_SATFINITE, __NV_E4M3), i.e. the
//            product rounded once to FP32, then cvt.rn.satfinite.e4m3x2.f32 on sm_89+.
// Layouts are exec/fp8's (= cuBLASLt's GEMM-ready ones): data row-major; VEC128 scales M-major
// scales[kb * rows + r]; BLK128x128 scales K-major scales[rb * L4 + kb], L4 = roundup(L, 4), the
// padding entries written as 0.
//
// All launchers are asynchronous on `stream`, check the launch (CudaError) and accept empty shapes.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

inline constexpr int kQuantBlock = 128;

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }
inline int k_blocks(int cols) { return ceil_div(cols, kQuantBlock); }
inline int k_blocks_padded(int cols) { return (k_blocks(cols) + 3) / 4 * 4; }

// x [rows, cols] -> codes [rows, cols], scales [k_blocks(cols) * rows] (1x128 tiles, VEC128).
void quantize_rowwise(const float* x, int rows, int cols, uint8_t* codes, float* scales, bool pow2_scales,
                      cudaStream_t stream);

// The rowwise quantisation of xᵀ, fused with the transpose (exec/fp8 quantize_columnwise):
// x [rows, cols] -> codes [cols, rows], scales [k_blocks(rows) * cols] (VEC128 of xᵀ).
void quantize_columnwise(const float* x, int rows, int cols, uint8_t* codes, float* scales, bool pow2_scales,
                         cudaStream_t stream);

// w [rows, cols] -> codes [rows, cols], scales [ceil(rows/128) * k_blocks_padded(cols)] (BLK128x128).
void quantize_blocks(const float* w, int rows, int cols, uint8_t* codes, float* scales, bool pow2_scales,
                     cudaStream_t stream);

// Exact transpose of a BLK128x128 tensor (exec/fp8 transpose): codes [rows, cols] -> t_codes
// [cols, rows]; scales (layout of [rows, cols]) -> t_scales [ceil(cols/128) * k_blocks_padded(rows)].
void transpose_blocks(const uint8_t* codes, const float* scales, int rows, int cols, uint8_t* t_codes,
                      float* t_scales, cudaStream_t stream);

// For the exhaustive conversion check: out[i] = __nv_cvt_float_to_fp8(bit_cast<float>(first + i), ...)
// for i < count (first + count <= 2^32).
enum class Fp8Kind { e4m3, e5m2 };
void convert_bit_patterns(uint64_t first, uint64_t count, Fp8Kind kind, bool satfinite, uint8_t* out,
                          cudaStream_t stream);

// Benchmark/test data: x[i] = lo + (hi - lo) * u(seed, i), u a counter-based hash in [0, 1).
void fill_uniform(float* x, std::size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream);

}  // namespace tandem::cuda
