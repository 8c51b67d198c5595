// Kernels of the MoE wire formats; contracts in wire_kernels.h. Integer bit recipes and one
// explicit __fmul_rn: nothing depends on nvcc's contraction or flush-to-zero settings.
#include "exec/ops/moe_layer/moe_cuda_kernels.h"

#include <cstddef>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"
#include "exec/backends/cuda/infra/kernels.h"

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

// decode(code) · scale as the CPU computes it, NaN operands included (wire_kernels.h).
__device__ __forceinline__ float dequantize_one(uint32_t code, float scale) {
  const float d = decode_e4m3(code);
  if (isnan(d)) return d;
  if (isnan(scale)) return __uint_as_float(__float_as_uint(scale) | 0x00400000u);
  const float p = __fmul_rn(d, scale);
  return isnan(p) ? __uint_as_float(0xFFC00000u) : p;  // 0 · Inf: x86's default NaN
}

__global__ void pack_bf16_kernel(const float* __restrict__ x, size_t n, uint16_t* __restrict__ out) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = bf16_bits(x[i]);
}

__global__ void unpack_bf16_kernel(const uint16_t* __restrict__ in, size_t n, float* __restrict__ out) {
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = __uint_as_float(static_cast<uint32_t>(in[i]) << 16);
}

__global__ void dequantize_rowwise_kernel(const uint8_t* __restrict__ codes, const float* __restrict__ scales,
                                          int rows, int cols, float* __restrict__ out) {
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(cols);
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const size_t r = i / static_cast<size_t>(cols);
    const size_t c = i % static_cast<size_t>(cols);
    const float s = scales[(c / kQuantBlock) * static_cast<size_t>(rows) + r];
    out[i] = dequantize_one(codes[i], s);
  }
}

// The element count, 0 for an empty shape; std::invalid_argument naming a negative size.
size_t elements(const char* op, int rows, int cols) {
  if (rows < 0) throw std::invalid_argument(std::string(op) + ": rows must be >= 0");
  if (cols < 0) throw std::invalid_argument(std::string(op) + ": cols must be >= 0");
  return static_cast<size_t>(rows) * static_cast<size_t>(cols);
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

}  // namespace tandem::cuda
