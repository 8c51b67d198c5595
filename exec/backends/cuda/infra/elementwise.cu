// Exact elementwise kernels of the CUDA backend (elementwise.h).
#include "exec/backends/cuda/infra/elementwise.h"


#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::bf16_round;
using device::grid_for;

// No __restrict__ below: the outputs may alias the inputs (element i is read before it is written
// by the same thread).
__global__ void add_kernel(const float* a, const float* b, std::size_t n, float* out) {
  for (std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x)
    out[i] = __fadd_rn(a[i], b[i]);
}

__global__ void scale_kernel(const float* x, std::size_t n, float s, float* out) {
  for (std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x)
    out[i] = __fmul_rn(x[i], s);
}

__global__ void round_to_bf16_kernel(const float* x, std::size_t n, float* out) {
  for (std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x)
    out[i] = bf16_round(x[i]);
}

}  // namespace

void add(const float* a, const float* b, std::size_t n, float* out, cudaStream_t stream) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, stream>>>(a, b, n, out);
  check_launch("add");
}

void add_inplace(float* acc, const float* x, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  add_kernel<<<grid_for(n, 256), 256, 0, stream>>>(acc, x, n, acc);
  check_launch("add_inplace");
}

void scale(const float* x, std::size_t n, float s, float* out, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, s, out);
  check_launch("scale");
}

void round_to_bf16(const float* x, std::size_t n, float* out, cudaStream_t stream) {
  if (n == 0) return;
  round_to_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, out);
  check_launch("round_to_bf16");
}

}  // namespace tandem::cuda
