// Kernels of the MoE layer: the wire formats and the permutation into expert segments; contracts in
// moe_cuda_kernels.h. Integer bit recipes and explicit IEEE intrinsics (__fmul_rn, __fadd_rn):
// nothing depends on nvcc's contraction or flush-to-zero settings.
#include "exec/ops/moe_layer/moe_cuda_kernels.h"

#include <cstddef>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"
#include "exec/backends/cuda/infra/fp8_kernels.h"

namespace tandem::cuda {
namespace {

using device::grid_for;
using device::bf16_bits;

constexpr unsigned kThreads = 256;

// exec/fp8 decode_e4m3: sign, 4 exponent bits (bias 7), 3 mantissa bits; only S.1111.111 is NaN.
// Normal codes map to float bits directly; subnormals are man · 2^-9 (an exact product: man < 8
// converts exactly and the result is a normal float); zero keeps the code's sign.
__device__ __forceinline__ float decode_e4m3(uint32_t code) {
  const uint32_t sign = (code & 0x80u) << 24;
  const uint32_t mag = code & 0x7Fu;
  if (mag == 0x7Fu) return __uint_as_float(sign | 0x7FC00000u);
  const uint32_t exp = mag >> 3, man = mag & 0x7u;
  uint32_t bits;
  if (exp != 0)
    bits = ((exp - 7u + 127u) << 23) | (man << 20);
  else
    bits = __float_as_uint(__fmul_rn(static_cast<float>(man), 0x1p-9f));
  return __uint_as_float(sign | bits);
}

// decode(code) · scale as the CPU computes it, NaN operands included (moe_cuda_kernels.h).
__device__ __forceinline__ float dequantize_one(uint32_t code, float scale) {
  const float d = decode_e4m3(code);
  if (isnan(d)) return d;
  if (isnan(scale)) return __uint_as_float(__float_as_uint(scale) | 0x00400000u);
  const float p = __fmul_rn(d, scale);
  return isnan(p) ? __uint_as_float(0xFFC00000u) : p;  // 0 · Inf: x86's default NaN
}

__global__ void pack_bf16_kernel(const float* __restrict__ x, size_t n, uint16_t* __restrict__ out) {
  const size_t stride = idx(gridDim.x) * blockDim.x;
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = bf16_bits(x[i]);
}

__global__ void unpack_bf16_kernel(const uint16_t* __restrict__ in, size_t n, float* __restrict__ out) {
  const size_t stride = idx(gridDim.x) * blockDim.x;
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __uint_as_float(static_cast<uint32_t>(in[i]) << 16);
}

__global__ void dequantize_rowwise_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                          int rows, int cols, float* __restrict__ out) {
  const size_t n = idx(rows) * idx(cols);
  const size_t stride = idx(gridDim.x) * blockDim.x;
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const size_t r = i / idx(cols);
    const size_t c = i % idx(cols);
    const float s = scales[(c / kQuantBlock) * idx(rows) + r];
    out[i] = dequantize_one(codes[i], s);
  }
}

// The element count, 0 for an empty shape; std::invalid_argument naming a negative size.
size_t elements(const char* op, int rows, int cols) {
  if (rows < 0) throw std::invalid_argument(std::string(op) + ": rows must be >= 0");
  if (cols < 0) throw std::invalid_argument(std::string(op) + ": cols must be >= 0");
  return idx(rows) * idx(cols);
}

__global__ void gather_rows_kernel(const float* __restrict__ src, const int32_t* __restrict__ src_row, int cols,
                                   float* __restrict__ dst) {
  const int i = blockIdx.x;
  const int s = src_row[i];
  float* d = dst + idx(i) * cols;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) d[c] = s >= 0 ? src[idx(s) * cols + c] : 0.0f;
}

__global__ void combine_rows_kernel(const float* __restrict__ src, const int32_t* __restrict__ row,
                                    const float* __restrict__ weight, int k, int cols, float* __restrict__ dst) {
  const int t = blockIdx.x;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int s = row[idx(t) * k + j];
      if (s >= 0) acc = __fadd_rn(acc, __fmul_rn(weight[idx(t) * k + j], src[idx(s) * cols + c]));
    }
    dst[idx(t) * cols + c] = acc;
  }
}

}  // namespace

void pack_bf16(const float* x, int rows, int cols, uint16_t* out, cudaStream_t stream) {
  const size_t n = elements("pack_bf16", rows, cols);
  if (n == 0) return;
  pack_bf16_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, n, out);
  check_launch("pack_bf16");
}

void unpack_bf16(const uint16_t* in, int rows, int cols, float* out, cudaStream_t stream) {
  const size_t n = elements("unpack_bf16", rows, cols);
  if (n == 0) return;
  unpack_bf16_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(in, n, out);
  check_launch("unpack_bf16");
}

void dequantize_rowwise(const uint8_t* codes, const float* scales, int rows, int cols, float* out,
                        cudaStream_t stream) {
  const size_t n = elements("dequantize_rowwise", rows, cols);
  if (n == 0) return;
  dequantize_rowwise_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(codes, scales, rows, cols, out);
  check_launch("dequantize_rowwise");
}

void gather_rows(const float* src, const int32_t* src_row, int dst_rows, int cols, float* dst, cudaStream_t stream) {
  if (dst_rows <= 0 || cols <= 0) return;
  gather_rows_kernel<<<static_cast<unsigned>(dst_rows), 256, 0, stream>>>(src, src_row, cols, dst);
  check_launch("gather_rows");
}

void combine_rows(const float* src, const int32_t* row, const float* weight, int tokens, int k, int cols,
                  float* dst, cudaStream_t stream) {
  if (tokens <= 0 || cols <= 0) return;
  combine_rows_kernel<<<static_cast<unsigned>(tokens), 256, 0, stream>>>(src, row, weight, k, cols, dst);
  check_launch("combine_rows");
}

}  // namespace tandem::cuda
