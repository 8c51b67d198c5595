// Element-wise kernels of the device linear layer; contracts in linear_kernels.h.
// The BF16 rounding is integer arithmetic (exec/fp8/bf16.cpp's), the accumulation an explicit
// __fadd_rn, so nothing here depends on nvcc's floating-point contraction.
#include "exec/ops/linear/linear_cuda_kernels.h"

#include <cstddef>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::grid_for;
using device::bf16_bits;
using device::bf16_round;

constexpr unsigned kThreads = 256;

// A grid-stride loop over rows * cols elements calling f(r, c, i), i = r * cols + c: one thread an
// element, row-major order, so neighbouring threads touch neighbouring addresses.
template <class F>
__device__ __forceinline__ void for_each_element(int rows, int cols, F f) {
  const size_t n = idx(rows) * idx(cols);
  const size_t stride = idx(gridDim.x) * blockDim.x;
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    f(i / idx(cols), i % idx(cols), i);
}

__global__ void to_bf16_kernel(const float* __restrict__ src, int rows, int cols, int ld, uint16_t* __restrict__ dst) {
  for_each_element(rows, cols,
                   [=](size_t r, size_t c, size_t i) { dst[i] = bf16_bits(src[r * idx(ld) + c]); });
}

// No __restrict__: src and dst may be the same array (in-place rounding).
__global__ void epilogue_kernel(const float* src, int ld_src, int rows, int cols, float* dst, int ld_dst,
                                bool round_bf16, bool accumulate) {
  for_each_element(rows, cols, [=](size_t r, size_t c, size_t) {
    float v = src[r * idx(ld_src) + c];
    if (round_bf16) v = bf16_round(v);
    float* d = dst + r * idx(ld_dst) + c;
    *d = accumulate ? __fadd_rn(*d, v) : v;
  });
}

__global__ void pad_copy_kernel(const float* __restrict__ src, int rows, int cols, int ld, float* __restrict__ dst,
                                int rows_p, int cols_p) {
  for_each_element(rows_p, cols_p, [=](size_t r, size_t c, size_t i) {
    dst[i] = (r < idx(rows) && c < idx(cols)) ? src[r * idx(ld) + c]
                                                                              : 0.0f;
  });
}

__global__ void swiglu_forward_kernel(const float* __restrict__ gu, int rows, int width, float* __restrict__ out) {
  const size_t n = idx(rows) * width;
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x) {
    const size_t r = i / width;
    const size_t j = i % width;
    const float g = gu[r * 2 * width + j];
    const float u = gu[r * 2 * width + width + j];
    const float silu = __fdiv_rn(g, __fadd_rn(1.0f, expf(-g)));
    out[i] = __fmul_rn(silu, u);
  }
}

__global__ void swiglu_backward_kernel(const float* __restrict__ gu, const float* __restrict__ dout, int rows,
                                       int width, float* __restrict__ dgu) {
  const size_t n = idx(rows) * width;
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x) {
    const size_t r = i / width;
    const size_t j = i % width;
    const float g = gu[r * 2 * width + j];
    const float u = gu[r * 2 * width + width + j];
    const float sig = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-g)));
    const float silu = __fmul_rn(g, sig);
    // silu'(g) = sig * (1 + g * (1 - sig))
    const float dsilu = __fmul_rn(sig, __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, sig))));
    dgu[r * 2 * width + j] = __fmul_rn(__fmul_rn(dout[i], u), dsilu);
    dgu[r * 2 * width + width + j] = __fmul_rn(dout[i], silu);
  }
}

}  // namespace

void linear_to_bf16(const float* src, int rows, int cols, int ld, uint16_t* dst, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const size_t n = idx(rows) * idx(cols);
  to_bf16_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(src, rows, cols, ld, dst);
  check_launch("linear_to_bf16");
}

void linear_epilogue(const float* src, int ld_src, int rows, int cols, float* dst, int ld_dst, bool round_bf16,
                     bool accumulate, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const size_t n = idx(rows) * idx(cols);
  epilogue_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(src, ld_src, rows, cols, dst, ld_dst, round_bf16, accumulate);
  check_launch("linear_epilogue");
}

void linear_pad_copy(const float* src, int rows, int cols, int ld, float* dst, int rows_p, int cols_p,
                     cudaStream_t stream) {
  if (rows_p <= 0 || cols_p <= 0) return;
  const size_t n = idx(rows_p) * idx(cols_p);
  pad_copy_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(src, rows, cols, ld, dst, rows_p, cols_p);
  check_launch("linear_pad_copy");
}

void swiglu_forward(const float* gate_up, int rows, int width, float* out, cudaStream_t stream) {
  const size_t n = idx(rows > 0 ? rows : 0) * idx(width > 0 ? width : 0);
  if (n == 0) return;
  swiglu_forward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(gate_up, rows, width, out);
  check_launch("swiglu_forward");
}

void swiglu_backward(const float* gate_up, const float* dout, int rows, int width, float* d_gate_up,
                     cudaStream_t stream) {
  const size_t n = idx(rows > 0 ? rows : 0) * idx(width > 0 ? width : 0);
  if (n == 0) return;
  swiglu_backward_kernel<<<grid_for(n, 256), 256, 0, stream>>>(gate_up, dout, rows, width, d_gate_up);
  check_launch("swiglu_backward");
}

}  // namespace tandem::cuda
