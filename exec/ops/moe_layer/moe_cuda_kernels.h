// Device kernels of the MoE layer: the wire formats (dispatch_plan.h) of DeviceMoeLayer's
// all_to_all_v payloads — BF16 pack / unpack and the FP8 wire's dequantisation (its quantisation is
// fp8_kernels.h quantize_rowwise(..., pow2_scales = true, ...)) — and, at the end, the permutation
// into expert segments and back (gather_rows, combine_rows).
//
// Host launchers on device pointers, asynchronous on `stream` (passed last), each launch checked
// (CudaError); empty shapes are no-ops; negative sizes throw std::invalid_argument naming the
// argument. Every result is bit-identical to exec/fp8, by construction:
//   pack_bf16           exec/fp8 float_to_bf16 (bf16.cpp), the same integer recipe: RNE by adding
//                       0x7FFF plus the kept LSB; NaN keeps its top half with the quiet bit forced.
//                       (linear_cuda_kernels.cu and elementwise.cu hold the same recipe in file-local device
//                       functions no header exposes, hence a third copy here.)
//   unpack_bf16         exec/fp8 bf16_to_float: the 16 bits shifted to the top, exact.
//   dequantize_rowwise  exec/fp8 dequantize(RowwiseFp8): decode_e4m3(code) · scale of its 1x128
//                       tile, one FP32 multiply rounded to nearest (__fmul_rn, no FTZ), operands in
//                       the CPU's order. decode_e4m3 is bit manipulation, exact for all 256 codes
//                       (S.1111.111 → the quiet NaN 0x7FC00000 with the code's sign, as exec/fp8).
//                       NaN operands: the GPU's multiply would return its canonical NaN; the CPU
//                       (x86 SSE) returns the NaN operand, quieted. The kernel does what the CPU
//                       does: a NaN decode is the result; else a NaN scale, quieted; else the
//                       product, where 0 · ±Inf gives x86's default NaN 0xFFC00000 (the quantiser
//                       never writes an Inf or NaN scale; this only keeps odd inputs bit-equal).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// out[r·cols + c] = float_to_bf16(x[r·cols + c])   (dense row-major; x and out must not overlap).
void pack_bf16(const float* x, int rows, int cols, uint16_t* out, cudaStream_t stream);

// out[i] = bf16_to_float(in[i]) for i < rows·cols.
void unpack_bf16(const uint16_t* in, int rows, int cols, float* out, cudaStream_t stream);

// codes [rows, cols] E4M3 row-major, scales [k_blocks(cols) · rows] VEC128 (scales[kb·rows + r]):
// out[r·cols + c] = decode_e4m3(codes[r·cols + c]) · scales[(c / 128)·rows + r].
void dequantize_rowwise(const uint8_t* codes, const float* scales, int rows, int cols, float* out,
                        cudaStream_t stream);

// Permutation into expert segments (exec/ops/moe_layer's padded layout) as a row gather:
//   dst[i, :] = src_row[i] >= 0 ? src[src_row[i], :] : 0     for i < dst_rows
// Padding rows of a 128-row-aligned segment have src_row = -1. Exact (a copy).
void gather_rows(const float* src, const int32_t* src_row, int dst_rows, int cols, float* dst, cudaStream_t stream);
// Unpermute / combine: dst[t, :] = sum over j < k of weight[t*k + j] * src[row[t*k + j], :], in
// increasing j (row -1 = skipped), FP32, no FMA contraction.
void combine_rows(const float* src, const int32_t* row, const float* weight, int tokens, int k, int cols,
                  float* dst, cudaStream_t stream);

}  // namespace tandem::cuda
