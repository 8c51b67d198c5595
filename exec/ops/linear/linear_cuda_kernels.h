// The small element-wise kernels of the device linear layer (linear.h): BF16 conversion of a GEMM
// input, the GEMM output's epilogue (BF16 rounding and/or accumulation) and zero-padding copies
// for the FP8 GEMMs' shape limits. All matrices are FP32 row-major with a row stride `ld`
// (elements, >= cols). Launchers are asynchronous on `stream`, check the launch (CudaError) and
// accept empty shapes.
//
// BF16 here is exec/fp8/bf16.h's float_to_bf16, written with the same integer operations (round
// to nearest, ties to even, by adding 0x7FFF plus the kept LSB; NaN keeps its top half with the
// quiet bit forced), so it is bit-identical to the CPU by construction, not by tolerance.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// dst[r * cols + c] (dense BF16 bit patterns) = float_to_bf16(src[r * ld + c]).
void linear_to_bf16(const float* src, int rows, int cols, int ld, uint16_t* dst, cudaStream_t stream);

// For r < rows, c < cols:  v = src[r * ld_src + c];  v = round_to_bf16(v) if round_bf16;
//                          dst[r * ld_dst + c] = accumulate ? dst[r * ld_dst + c] + v : v   (FP32 add, RN).
// src == dst with ld_src == ld_dst (in-place rounding) is allowed: each element is read and
// written by the same thread.
void linear_epilogue(const float* src, int ld_src, int rows, int cols, float* dst, int ld_dst, bool round_bf16,
                     bool accumulate, cudaStream_t stream);

// dst [rows_p, cols_p] (dense) = src [rows, cols] (row stride ld) padded with zeros (rows_p >= rows,
// cols_p >= cols). Padding with zeros is exact for the block-scaled FP8 GEMMs: a zero cannot raise a
// tile's amax, so the real elements quantise to the same codes and scales, and the padding
// quantises to zero codes that add nothing.
void linear_pad_copy(const float* src, int rows, int cols, int ld, float* dst, int rows_p, int cols_p,
                     cudaStream_t stream);

// SwiGLU on a fused [rows, 2 * width] gate|up matrix (gate = columns [0, width), up = [width, 2w)):
//   forward  out[r, j] = silu(g) * u, silu(g) = g / (1 + exp(-g))
//   backward d_gate_up[r, j] = dout * u * silu'(g), d_gate_up[r, width + j] = dout * silu(g)
// Not bit-identical to exec/ops/linear/ffn.h (expf differs between CUDA and glibc): compare with a tolerance.
void swiglu_forward(const float* gate_up, int rows, int width, float* out, cudaStream_t stream);
void swiglu_backward(const float* gate_up, const float* dout, int rows, int width, float* d_gate_up,
                     cudaStream_t stream);

}  // namespace tandem::cuda
