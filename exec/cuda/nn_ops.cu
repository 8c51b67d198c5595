// Device twins of exec/nn's embedding, cross-entropy and AdamW, and the elementwise helpers; the
// contracts (and which results are bit-identical to the CPU) are in nn_ops.h.
// Arithmetic that must match the CPU is written with explicit IEEE intrinsics (__fadd_rn,
// __fmul_rn, __fdiv_rn, __fsqrt_rn, and their double twins) so nvcc cannot contract it into FMAs.
#include "exec/cuda/nn_ops.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "exec/cuda/cuda_check.h"
#include "exec/cuda/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::grid_for;
using device::bf16_round;

constexpr unsigned kFull = 0xFFFFFFFFu;

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(what);
}

// ---------------------------------------------------------------- embedding

constexpr int kEmbThreads = 256;
constexpr int kEmbWarps = kEmbThreads / 32;
// Columns a thread accumulates in registers per pass over the matches (hidden ≤ 8192 in one pass).
constexpr int kEmbCols = 32;

__global__ void embedding_forward_kernel(const float* __restrict__ table, int vocab, int hidden,
                                         const int32_t* __restrict__ tokens, float* __restrict__ out,
                                         int* bad_token) {
  const int i = blockIdx.x;
  const int tok = tokens[i];
  float* dst = out + static_cast<std::size_t>(i) * hidden;
  if (tok < 0 || tok >= vocab) {
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = __int_as_float(0x7FC00000);
    if (threadIdx.x == 0 && bad_token) *bad_token = 1;
    return;
  }
  const float* src = table + static_cast<std::size_t>(tok) * hidden;
  for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = src[j];
}

// Block i handles token position i. If an earlier position holds the same id, that position's
// block owns the row and this one exits. Otherwise it walks positions i, i+1, … in chunks of
// kEmbThreads, compacts the matching positions of a chunk in increasing order (ballot + warp
// prefix) and adds those rows of d_out, in that order, into registers holding the table row.
__global__ void __launch_bounds__(kEmbThreads)
embedding_backward_kernel(const int32_t* __restrict__ tokens, int n, const float* __restrict__ d_out, int vocab,
                          int hidden, float* __restrict__ d_table, int* bad_token) {
  __shared__ int matches[kEmbThreads];
  __shared__ int warp_count[kEmbWarps];
  const int i = blockIdx.x;
  const int tok = tokens[i];
  if (tok < 0 || tok >= vocab) {
    if (threadIdx.x == 0 && bad_token) *bad_token = 1;
    return;  // the whole block: tok is uniform
  }
  for (int base = 0; base < i; base += kEmbThreads) {
    const int k = base + static_cast<int>(threadIdx.x);
    if (__syncthreads_or(k < i && tokens[k] == tok)) return;  // uniform: not the first occurrence
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* row = d_table + static_cast<std::size_t>(tok) * hidden;
  for (int col0 = 0; col0 < hidden; col0 += kEmbThreads * kEmbCols) {
    float acc[kEmbCols];
#pragma unroll
    for (int c = 0; c < kEmbCols; ++c) {
      const int j = col0 + c * kEmbThreads + static_cast<int>(threadIdx.x);
      acc[c] = j < hidden ? row[j] : 0.0f;
    }
    for (int base = i; base < n; base += kEmbThreads) {
      const int k = base + static_cast<int>(threadIdx.x);
      const bool same = k < n && tokens[k] == tok;
      const unsigned ballot = __ballot_sync(kFull, same);
      if (lane == 0) warp_count[warp] = __popc(ballot);
      __syncthreads();
      int offset = 0, total = 0;
      for (int w = 0; w < kEmbWarps; ++w) {
        if (w < warp) offset += warp_count[w];
        total += warp_count[w];
      }
      if (same) matches[offset + __popc(ballot & ((1u << lane) - 1u))] = k;
      __syncthreads();
      for (int q = 0; q < total; ++q) {
        const float* src = d_out + static_cast<std::size_t>(matches[q]) * hidden;
#pragma unroll
        for (int c = 0; c < kEmbCols; ++c) {
          const int j = col0 + c * kEmbThreads + static_cast<int>(threadIdx.x);
          if (j < hidden) acc[c] = __fadd_rn(acc[c], src[j]);
        }
      }
      __syncthreads();  // matches / warp_count are rewritten by the next chunk
    }
#pragma unroll
    for (int c = 0; c < kEmbCols; ++c) {
      const int j = col0 + c * kEmbThreads + static_cast<int>(threadIdx.x);
      if (j < hidden) row[j] = acc[c];
    }
  }
}

// ---------------------------------------------------------------- cross-entropy

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
  const std::size_t base = static_cast<std::size_t>(i) * vocab;
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

// ---------------------------------------------------------------- AdamW and elementwise

__global__ void adamw_kernel(float* __restrict__ params, const float* __restrict__ grads, float* __restrict__ m,
                             float* __restrict__ v, std::size_t n, AdamWScalars s) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const float g = grads[i];
    float mi = __fadd_rn(__fmul_rn(s.b1, m[i]), __fmul_rn(s.one_m_b1, g));
    float vi = __fadd_rn(__fmul_rn(s.b2, v[i]), __fmul_rn(s.one_m_b2, __fmul_rn(g, g)));
    if (s.bf16_moments) {
      mi = bf16_round(mi);
      vi = bf16_round(vi);
    }
    m[i] = mi;
    v[i] = vi;
    const float p = __fmul_rn(params[i], s.decay);
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.sqrt_bc2), s.eps);
    params[i] = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(mi, denom)));
  }
}

// No __restrict__ below: the outputs may alias the inputs (element i is read before it is written
// by the same thread).
__global__ void add_kernel(const float* a, const float* b, std::size_t n, float* out) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = __fadd_rn(a[i], b[i]);
}

__global__ void scale_kernel(const float* x, std::size_t n, float s, float* out) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = __fmul_rn(x[i], s);
}

__global__ void round_to_bf16_kernel(const float* x, std::size_t n, float* out) {
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x)
    out[i] = bf16_round(x[i]);
}

}  // namespace

void embedding_forward(const float* table, int vocab, int hidden, const int32_t* tokens, int n_tokens, float* out,
                       int* bad_token, cudaStream_t stream) {
  require(vocab >= 0 && hidden >= 0 && n_tokens >= 0, "embedding_forward: negative vocab, hidden or n_tokens");
  if (n_tokens == 0 || hidden == 0) return;
  embedding_forward_kernel<<<static_cast<unsigned>(n_tokens), 256, 0, stream>>>(table, vocab, hidden, tokens, out,
                                                                                bad_token);
  check_launch("embedding_forward");
}

void embedding_backward(const int32_t* tokens, int n_tokens, const float* d_out, int vocab, int hidden,
                        float* d_table, int* bad_token, cudaStream_t stream) {
  require(vocab >= 0 && hidden >= 0 && n_tokens >= 0, "embedding_backward: negative vocab, hidden or n_tokens");
  if (n_tokens == 0 || hidden == 0) return;
  embedding_backward_kernel<<<static_cast<unsigned>(n_tokens), kEmbThreads, 0, stream>>>(tokens, n_tokens, d_out,
                                                                                         vocab, hidden, d_table,
                                                                                         bad_token);
  check_launch("embedding_backward");
}

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

AdamWScalars adamw_scalars(double lr, double beta1, double beta2, double eps, double weight_decay, bool bf16_moments,
                           int64_t step) {
  require(step >= 1, "adamw_scalars: step counts from 1");
  const double t = static_cast<double>(step);
  AdamWScalars s;
  s.b1 = static_cast<float>(beta1);
  s.b2 = static_cast<float>(beta2);
  s.one_m_b1 = static_cast<float>(1.0 - beta1);
  s.one_m_b2 = static_cast<float>(1.0 - beta2);
  s.decay = static_cast<float>(1.0 - lr * weight_decay);
  s.step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
  s.sqrt_bc2 = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  s.eps = static_cast<float>(eps);
  s.bf16_moments = bf16_moments;
  return s;
}

void adamw_step(float* params, const float* grads, float* m, float* v, std::size_t n, const AdamWScalars& s,
                cudaStream_t stream) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n, 256), 256, 0, stream>>>(params, grads, m, v, n, s);
  check_launch("adamw_step");
}

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
