// Softmax cross-entropy on the device (loss_cuda.h).
#include "exec/ops/embedding/loss_cuda.h"

#include <stdexcept>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

using device::require;

constexpr int kCeThreads = 256;
constexpr int kCeWarps = kCeThreads / 32;

// Fixed-shape block reductions (warp butterfly, then the warps' partials in warp order): the same
// tree every run, so deterministic. Every thread gets the result.
__device__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  float r = shared[0];
  for (int w = 1; w < kCeWarps; ++w) r = fmaxf(r, shared[w]);
  return r;
}

__device__ double block_sum(double v, double* shared) {
  for (int o = 16; o > 0; o >>= 1) v = __dadd_rn(v, __shfl_xor_sync(kFull, v, o));
  __syncthreads();
  if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = v;
  __syncthreads();
  double r = shared[0];
  for (int w = 1; w < kCeWarps; ++w) r = __dadd_rn(r, shared[w]);
  return r;
}

// One block per row; exp(l − mx) is recomputed in the last pass (the same value: same inputs,
// same function), so no per-row workspace is needed.
__global__ void __launch_bounds__(kCeThreads)
cross_entropy_kernel(const float* __restrict__ logits, int vocab, const int32_t* __restrict__ targets, double scale,
                     float* __restrict__ d_logits, double* __restrict__ row_loss) {
  __shared__ float red_f[kCeWarps];
  __shared__ double red_d[kCeWarps];
  const int i = blockIdx.x;
  const std::size_t base = idx(i) * vocab;
  const float* li = logits + base;
  float* di = d_logits + base;
  const int t = targets[i];
  if (t < 0 || t >= vocab) {  // uniform per block
    const float fill = t < 0 ? 0.0f : __int_as_float(0x7FC00000);
    for (int j = threadIdx.x; j < vocab; j += kCeThreads) di[j] = fill;
    if (threadIdx.x == 0) row_loss[i] = t < 0 ? 0.0 : __longlong_as_double(0x7FF8000000000000ll);
    return;
  }
  // The CPU's max runs over doubles; converting the float max is the same value.
  float mxf = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += kCeThreads) mxf = fmaxf(mxf, li[j]);
  const double mx = static_cast<double>(block_max(mxf, red_f));

  double part = 0.0;
  for (int j = threadIdx.x; j < vocab; j += kCeThreads) part = __dadd_rn(part, exp(__dsub_rn(li[j], mx)));
  const double sum = block_sum(part, red_d);

  if (threadIdx.x == 0) {
    const double lse = __dadd_rn(mx, log(sum));
    row_loss[i] = __dmul_rn(scale, __dsub_rn(lse, static_cast<double>(li[t])));
  }
  for (int j = threadIdx.x; j < vocab; j += kCeThreads) {
    const double p = __ddiv_rn(exp(__dsub_rn(li[j], mx)), sum);
    di[j] = __double2float_rn(__dmul_rn(scale, j == t ? __dsub_rn(p, 1.0) : p));
  }
}

// *loss = Σ row_loss[i] in row order (the CPU's), one thread adding; the block stages chunks of
// the rows through shared memory so that thread's loads are shared-memory loads.
constexpr int kSumThreads = 1024;
__global__ void __launch_bounds__(kSumThreads) sum_in_order_kernel(const double* __restrict__ v, int n,
                                                                   double* __restrict__ out) {
  __shared__ double chunk[kSumThreads];
  double acc = 0.0;
  for (int base = 0; base < n; base += kSumThreads) {
    const int k = base + static_cast<int>(threadIdx.x);
    __syncthreads();
    chunk[threadIdx.x] = k < n ? v[k] : 0.0;
    __syncthreads();
    if (threadIdx.x == 0) {
      const int m = min(kSumThreads, n - base);
      for (int q = 0; q < m; ++q) acc = __dadd_rn(acc, chunk[q]);
    }
  }
  if (threadIdx.x == 0) *out = acc;
}

}  // namespace

void cross_entropy(const float* logits, int rows, int vocab, const int32_t* targets, double scale, float* d_logits,
                   double* row_loss, double* loss, cudaStream_t stream) {
  require(rows >= 0 && vocab >= 0, "cross_entropy: negative rows or vocab");
  if (rows > 0) {
    require(row_loss != nullptr, "cross_entropy: row_loss is required");
    // vocab = 0 needs no special case: every row is then ignored (0) or out of range (NaN).
    cross_entropy_kernel<<<static_cast<unsigned>(rows), kCeThreads, 0, stream>>>(logits, vocab, targets, scale,
                                                                                  d_logits, row_loss);
    check_launch("cross_entropy");
  }
  if (loss) {
    if (rows == 0) {
      check(cudaMemsetAsync(loss, 0, sizeof(double), stream), "cross_entropy: zero loss");
      return;
    }
    sum_in_order_kernel<<<1, kSumThreads, 0, stream>>>(row_loss, rows, loss);
    check_launch("cross_entropy: loss sum");
  }
}

}  // namespace tandem::cuda
