// RMSNorm on the device (rmsnorm_cuda.h).
#include "exec/ops/rmsnorm/rmsnorm_cuda.h"

#include <cstddef>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"

namespace tandem::cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the total.
__device__ float block_sum(float v, float* shared32) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // shared32 may still be read by a previous call
  if (lane == 0) shared32[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) total += shared32[i];
  return total;
}

__global__ void rmsnorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ w, int cols, float eps,
                                       float* __restrict__ y, float* __restrict__ inv_rms) {
  __shared__ float red[32];
  const size_t base = idx(blockIdx.x) * cols;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) ss += x[base + j] * x[base + j];
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  for (int j = threadIdx.x; j < cols; j += blockDim.x) y[base + j] = w[j] * (x[base + j] * r);
  if (inv_rms && threadIdx.x == 0) inv_rms[blockIdx.x] = r;
}

__global__ void rmsnorm_backward_input_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                              const float* __restrict__ dy, int cols, float eps, float* __restrict__ dx) {
  __shared__ float red[32];
  const size_t base = idx(blockIdx.x) * cols;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) ss += x[base + j] * x[base + j];
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(cols) + eps);
  float dot = 0.0f;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) dot += (w[j] * dy[base + j]) * (x[base + j] * r);
  dot = block_sum(dot, red);
  const float mean = dot / static_cast<float>(cols);
  for (int j = threadIdx.x; j < cols; j += blockDim.x)
    dx[base + j] = r * (w[j] * dy[base + j] - (x[base + j] * r) * mean);
}

__global__ void rmsnorm_backward_weight_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                               const float* __restrict__ inv_rms, int rows, int cols,
                                               float* __restrict__ dw) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float acc = 0.0f;
  for (int i = 0; i < rows; ++i) {
    const size_t k = idx(i) * cols + j;
    acc = __fadd_rn(acc, __fmul_rn(dy[k], __fmul_rn(x[k], inv_rms[i])));
  }
  dw[j] = acc;
}

}  // namespace

void rmsnorm_forward(const float* x, const float* w, int rows, int cols, float eps, float* y, float* inv_rms,
                     cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  rmsnorm_forward_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(x, w, cols, eps, y, inv_rms);
  check_launch("rmsnorm_forward");
}

void rmsnorm_backward_input(const float* x, const float* w, const float* dy, int rows, int cols, float eps,
                            float* dx, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  rmsnorm_backward_input_kernel<<<static_cast<unsigned>(rows), 256, 0, stream>>>(x, w, dy, cols, eps, dx);
  check_launch("rmsnorm_backward_input");
}

void rmsnorm_backward_weight(const float* x, const float* dy, const float* inv_rms, int rows, int cols, float* dw,
                             cudaStream_t stream) {
  if (cols <= 0) return;
  if (rows <= 0) {
    check(cudaMemsetAsync(dw, 0, sizeof(float) * idx(cols), stream), "rmsnorm_backward_weight");
    return;
  }
  rmsnorm_backward_weight_kernel<<<static_cast<unsigned>(ceil_div(cols, 256)), 256, 0, stream>>>(x, dy, inv_rms, rows,
                                                                                                  cols, dw);
  check_launch("rmsnorm_backward_weight");
}

}  // namespace tandem::cuda
