// The embedding on the device (embedding_cuda.h).
#include "exec/ops/embedding/embedding_cuda.h"

#include <stdexcept>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

using device::require;

constexpr int kEmbThreads = 256;
constexpr int kEmbWarps = kEmbThreads / 32;
// Columns a thread accumulates in registers per pass over the matches (hidden ≤ 8192 in one pass).
constexpr int kEmbCols = 32;

__global__ void embedding_forward_kernel(const float* __restrict__ table, int vocab, int hidden,
                                         const int32_t* __restrict__ tokens, float* __restrict__ out,
                                         int* bad_token) {
  const int i = blockIdx.x;
  const int tok = tokens[i];
  float* dst = out + idx(i) * hidden;
  if (tok < 0 || tok >= vocab) {
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = __int_as_float(0x7FC00000);
    if (threadIdx.x == 0 && bad_token) *bad_token = 1;
    return;
  }
  const float* src = table + idx(tok) * hidden;
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
  float* row = d_table + idx(tok) * hidden;
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
        const float* src = d_out + idx(matches[q]) * hidden;
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

}  // namespace tandem::cuda
