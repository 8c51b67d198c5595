#include "exec/ops/balance/balance_cuda.h"

#include <cstddef>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::require;

void check_shape(const char* op, int tokens, int n_routed, int seq_len) {
  const std::string p(op);
  if (tokens < 0) throw std::invalid_argument(p + ": negative tokens");
  if (seq_len <= 0 || tokens % seq_len != 0)
    throw std::invalid_argument(p + ": tokens must be a whole number of sequences (seq_len > 0)");
  if (n_routed <= 0 || n_routed > kBalanceMaxExperts)
    throw std::invalid_argument(p + ": n_routed must be in [1, " + std::to_string(kBalanceMaxExperts) + "]");
}

// Forward block size: one thread per expert, at least 128 (the threads also sum chunks of tokens).
int forward_threads(int n_routed) {
  const int t = (n_routed + 31) / 32 * 32;
  return t < 128 ? 128 : t;
}

// One block per sequence q; thread e < E owns expert e. Tokens are walked in chunks of blockDim:
// thread i first sums the scores of the chunk's token i (S_t, sequentially over the experts, the
// CPU's order) into shared memory, then every expert thread adds s_te / S_t for the chunk's tokens
// in increasing t (the CPU's order for P) and counts its id in their routing.
// f and P are written before the block barrier and read back by thread 0 after it (the barrier
// makes a block's global writes visible to the block), so they carry no __restrict__.
__global__ void balance_forward_kernel(const float* __restrict__ scores, const int32_t* __restrict__ expert, int E,
                                       int K, int seq_len, float f_scale, float alpha, float* f, float* P,
                                       float* __restrict__ per_sequence) {
  extern __shared__ float row_sum[];  // [blockDim.x]
  const int q = blockIdx.x;
  const int e = threadIdx.x;
  const std::size_t first = idx(q) * idx(seq_len);
  float p = 0.0f;
  long long count = 0;
  for (int c0 = 0; c0 < seq_len; c0 += blockDim.x) {
    const int n = min(static_cast<int>(blockDim.x), seq_len - c0);
    if (static_cast<int>(threadIdx.x) < n) {
      const float* row = scores + (first + c0 + threadIdx.x) * idx(E);
      float sum = 0.0f;
      for (int j = 0; j < E; ++j) sum = __fadd_rn(sum, row[j]);
      row_sum[threadIdx.x] = sum;
    }
    __syncthreads();
    if (e < E) {
      for (int i = 0; i < n; ++i) {
        const std::size_t t = first + idx(c0 + i);
        p = __fadd_rn(p, __fdiv_rn(scores[t * E + e], row_sum[i]));
        const int32_t* ids = expert + t * K;
        for (int j = 0; j < K; ++j) count += ids[j] == e ? 1 : 0;
      }
    }
    __syncthreads();  // row_sum is rewritten by the next chunk
  }
  const std::size_t qe = idx(q) * E;
  if (e < E) {
    f[qe + e] = __fmul_rn(f_scale, __ll2float_rn(count));
    P[qe + e] = __fdiv_rn(p, static_cast<float>(seq_len));
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float l = 0.0f;
    for (int i = 0; i < E; ++i) l = __fadd_rn(l, __fmul_rn(f[qe + i], P[qe + i]));
    per_sequence[q] = __fmul_rn(alpha, l);
  }
}

// *loss = Σ_q per_sequence[q] in increasing q (the CPU's `loss += α·l`), one thread.
__global__ void balance_sum_kernel(const float* __restrict__ per_sequence, int sequences, float* __restrict__ loss) {
  float s = 0.0f;
  for (int q = 0; q < sequences; ++q) s = __fadd_rn(s, per_sequence[q]);
  *loss = s;
}

constexpr int kBackwardTokens = 128;  // tokens per backward block = its threads

// Block b covers tokens [b·128, b·128 + n). Thread i computes token i's S_t and dot_t =
// Σ_e g_e · (s_te / S_t) sequentially over e (the CPU's order) into shared memory; then the block
// writes the n rows of d_scores elementwise (coalesced), g recomputed by the same operations.
__global__ void balance_backward_kernel(const float* __restrict__ f, const float* __restrict__ scores, int tokens,
                                        int E, int seq_len, float d_loss_alpha, float* __restrict__ d_scores) {
  __shared__ float s_sum[kBackwardTokens];
  __shared__ float s_dot[kBackwardTokens];
  const int t0 = blockIdx.x * kBackwardTokens;
  const int n = min(kBackwardTokens, tokens - t0);
  const float T = static_cast<float>(seq_len);
  if (static_cast<int>(threadIdx.x) < n) {
    const int t = t0 + threadIdx.x;
    const float* row = scores + idx(t) * E;
    const float* fq = f + idx(t / seq_len) * E;
    float sum = 0.0f;
    for (int j = 0; j < E; ++j) sum = __fadd_rn(sum, row[j]);
    float dot = 0.0f;
    for (int j = 0; j < E; ++j) {
      const float g = __fdiv_rn(__fmul_rn(d_loss_alpha, fq[j]), T);
      dot = __fadd_rn(dot, __fmul_rn(g, __fdiv_rn(row[j], sum)));
    }
    s_sum[threadIdx.x] = sum;
    s_dot[threadIdx.x] = dot;
  }
  __syncthreads();
  const std::size_t total = idx(n) * E;
  const std::size_t base = idx(t0) * E;
  for (std::size_t e = threadIdx.x; e < total; e += blockDim.x) {
    const int i = static_cast<int>(e / E);
    const int j = static_cast<int>(e % E);
    const int t = t0 + i;
    const float g = __fdiv_rn(__fmul_rn(d_loss_alpha, f[idx(t / seq_len) * E + j]), T);
    d_scores[base + e] = __fdiv_rn(__fsub_rn(g, s_dot[i]), s_sum[i]);
  }
}

}  // namespace

void balance_loss_forward(const float* scores, const int32_t* expert, int tokens, int n_routed, int top_k,
                          int seq_len, double alpha, float* f, float* P, float* per_sequence, float* loss,
                          cudaStream_t stream) {
  check_shape("balance_loss_forward", tokens, n_routed, seq_len);
  require(top_k > 0 && top_k <= n_routed, "balance_loss_forward: top_k must be in [1, n_routed]");
  require(loss != nullptr, "balance_loss_forward: loss is required");
  const int sequences = tokens / seq_len;
  if (sequences == 0) {
    check(cudaMemsetAsync(loss, 0, sizeof(float), stream), "balance_loss_forward: zero loss");
    return;
  }
  require(scores && expert && f && P && per_sequence, "balance_loss_forward: null pointer");
  // The CPU's float scalars, computed on the host by the same float operations.
  const float f_scale =
      static_cast<float>(n_routed) / (static_cast<float>(top_k) * static_cast<float>(seq_len));
  const float a = static_cast<float>(alpha);
  const int threads = forward_threads(n_routed);
  balance_forward_kernel<<<static_cast<unsigned>(sequences), static_cast<unsigned>(threads),
                           idx(threads) * sizeof(float), stream>>>(
      scores, expert, n_routed, top_k, seq_len, f_scale, a, f, P, per_sequence);
  check_launch("balance_loss_forward");
  balance_sum_kernel<<<1, 1, 0, stream>>>(per_sequence, sequences, loss);
  check_launch("balance_loss_forward: sum over sequences");
}

void balance_loss_backward(const float* f, const float* scores, int tokens, int n_routed, int seq_len, double alpha,
                           float d_loss, float* d_scores, cudaStream_t stream) {
  check_shape("balance_loss_backward", tokens, n_routed, seq_len);
  if (tokens == 0) return;
  require(f && scores && d_scores, "balance_loss_backward: null pointer");
  require(d_scores != scores, "balance_loss_backward: d_scores may not alias scores");
  // The CPU's `d_loss * a * f / T` evaluates (d_loss · a) first: the same float product here.
  const float d_loss_alpha = d_loss * static_cast<float>(alpha);
  const unsigned blocks = static_cast<unsigned>((tokens + kBackwardTokens - 1) / kBackwardTokens);
  balance_backward_kernel<<<blocks, kBackwardTokens, 0, stream>>>(f, scores, tokens, n_routed, seq_len, d_loss_alpha,
                                                                 d_scores);
  check_launch("balance_loss_backward");
}

}  // namespace tandem::cuda
