// MLA on the device; see attention.h for the contract and exec/ops/attention/attention.cpp for the CPU twin.
// Arithmetic that mirrors the CPU op for op (RoPE, the softmax's scale/subtract/divide, the
// softmax backward, the norm weight accumulation, the row sums D) is written with explicit _rn
// intrinsics so nvcc cannot contract it into FMAs.
#include "exec/ops/attention/attention_cuda.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/fp8_kernels.h"
#include "exec/ops/rmsnorm/rmsnorm_cuda.h"

namespace tandem::cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kRopeSmem = 4096;  // floats of one RoPE pass (16 KiB of shared memory)
constexpr int kSoftmaxWarps = 8;

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

unsigned blocks_for(std::size_t n, const char* what) {
  if (n > idx(INT_MAX)) throw std::invalid_argument(std::string(what) + ": grid too large");
  return static_cast<unsigned>(n);
}

// ---------------------------------------------------------------- RoPE

// One block per row; the row's groups pass through shared memory kRopeSmem floats at a time, so
// in == out works (every read of a pass happens before any write of it).
__global__ void rope_kernel(const float* in, std::size_t ld_in, float* out, std::size_t ld_out, int width, int count,
                            int stride, int seq_len, const float* __restrict__ table, int inverse) {
  __shared__ float buf[kRopeSmem];
  const std::size_t r = blockIdx.x;
  const int half = width / 2;
  const int pos = static_cast<int>(r % idx(seq_len));
  const float* cs = table + idx(pos) * half;
  const float* sn = table + (idx(seq_len) + pos) * half;
  const float* src = in + r * ld_in;
  float* dst = out + r * ld_out;
  const int per_pass = kRopeSmem / width;
  for (int g0 = 0; g0 < count; g0 += per_pass) {
    const int ng = min(per_pass, count - g0);
    for (int e = threadIdx.x; e < ng * width; e += blockDim.x) {
      const int g = e / width, j = e - g * width;
      buf[e] = src[idx(g0 + g) * stride + j];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ng * half; e += blockDim.x) {
      const int g = e / half, i = e - g * half;
      const float* v = buf + g * width;
      float* o = dst + idx(g0 + g) * stride;
      const float c = cs[i], s = sn[i];
      if (!inverse) {  // interleaved in, rotate-half out
        const float a = v[2 * i], b = v[2 * i + 1];
        o[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
        o[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
      } else {  // the transpose: rotate-half in, interleaved out
        const float lo = v[i], hi = v[i + half];
        o[2 * i] = __fadd_rn(__fmul_rn(lo, c), __fmul_rn(hi, s));
        o[2 * i + 1] = __fsub_rn(__fmul_rn(hi, c), __fmul_rn(lo, s));
      }
    }
    __syncthreads();
  }
}

// ---------------------------------------------------------------- RMSNorm weight gradient

__global__ void rmsnorm_weight_accumulate_kernel(const float* __restrict__ x, std::size_t ld_x,
                                                 const float* __restrict__ dy, std::size_t ld_dy,
                                                 const float* __restrict__ inv_rms, int rows, int cols,
                                                 float* __restrict__ dw) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float acc = dw[j];
  for (int i = 0; i < rows; ++i) {
    const std::size_t ii = idx(i);
    acc = __fadd_rn(acc, __fmul_rn(dy[ii * ld_dy + j], __fmul_rn(x[ii * ld_x + j], inv_rms[i])));
  }
  dw[j] = acc;
}

// ---------------------------------------------------------------- attention core
//
// A chunk covers (sequence, head) pairs z in [z0, z0 + zc), z = b·heads + h. Packed row p of the
// chunk is position s = p % S of pair z = z0 + p / S; its token row is r = b·S + s.

struct PackedRow {
  std::size_t r;  // token row
  int h;          // head
  int s;          // position in the sequence
};

__device__ __forceinline__ PackedRow packed_row(std::size_t p, int S, int H, long long z0) {
  const long long z = z0 + static_cast<long long>(p / idx(S));
  const int s = static_cast<int>(p % idx(S));
  const long long b = z / H;
  return {idx(b) * S + s, static_cast<int>(z - b * H), s};
}

// dst[p·ld_dst + d] = src[r·ld_src + h·head_stride + d], d < width (head_stride 0: shared by heads).
__global__ void gather_heads_kernel(const float* __restrict__ src, std::size_t ld_src, int head_stride, int width,
                                    int S, int H, long long z0, float* __restrict__ dst, int ld_dst) {
  const std::size_t p = blockIdx.x;
  const PackedRow pr = packed_row(p, S, H, z0);
  const float* from = src + pr.r * ld_src + idx(pr.h) * head_stride;
  float* to = dst + p * ld_dst;
  for (int d = threadIdx.x; d < width; d += blockDim.x) to[d] = from[d];
}

// The inverse: dst[r·ld_dst + h·head_stride + d] = src[p·ld_src + d].
__global__ void scatter_heads_kernel(const float* __restrict__ src, int ld_src, int width, int S, int H, long long z0,
                                     float* __restrict__ dst, std::size_t ld_dst, int head_stride) {
  const std::size_t p = blockIdx.x;
  const PackedRow pr = packed_row(p, S, H, z0);
  const float* from = src + p * ld_src;
  float* to = dst + pr.r * ld_dst + idx(pr.h) * head_stride;
  for (int d = threadIdx.x; d < width; d += blockDim.x) to[d] = from[d];
}

// dk_pe[r, d] += Σ over the chunk's heads of sequence b, in increasing h, of dK_pe[z, s, d]: a
// running sum, so the result is Σ_h in head order whatever the chunking. One block per token row
// of the sequences the chunk touches (b_first = z0 / H onwards).
__global__ void sum_heads_kernel(const float* __restrict__ dk, int ld_dk, int width, int S, int H, long long z0,
                                 long long z1, float* __restrict__ dk_pe) {
  const long long b = z0 / H + static_cast<long long>(blockIdx.x / static_cast<unsigned>(S));
  const int s = static_cast<int>(blockIdx.x % static_cast<unsigned>(S));
  const long long h_lo = max(0LL, z0 - b * H), h_hi = min(static_cast<long long>(H), z1 - b * H);
  const std::size_t r = idx(b) * S + s;
  for (int d = threadIdx.x; d < width; d += blockDim.x) {
    float acc = dk_pe[r * width + d];
    for (long long h = h_lo; h < h_hi; ++h)
      acc = __fadd_rn(acc, dk[(idx(b * H + h - z0) * S + s) * ld_dk + d]);
    dk_pe[r * width + d] = acc;
  }
}

// Causal softmax of the chunk's score rows in place, one warp per row: s_j = raw_j·scale for
// j <= i, p_j = exp(s_j − max) / Σ, 0 for j > i; lse[r, h] = max + log Σ (nn's order of ops).
__global__ void causal_softmax_kernel(float* __restrict__ P, std::size_t rows, int S, int H, long long z0,
                                      float scale, float* __restrict__ lse) {
  const std::size_t row = idx(blockIdx.x) * kSoftmaxWarps + threadIdx.x / 32;
  if (row >= rows) return;  // the whole warp
  const int lane = threadIdx.x % 32;
  const PackedRow pr = packed_row(row, S, H, z0);
  float* p = P + row * S;
  const int n = pr.s + 1;
  float mx = -INFINITY;
  for (int j = lane; j < n; j += 32) {
    const float s = __fmul_rn(p[j], scale);
    p[j] = s;
    mx = fmaxf(mx, s);
  }
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, o));
  float sum = 0.0f;
  for (int j = lane; j < n; j += 32) {
    const float e = expf(__fsub_rn(p[j], mx));
    p[j] = e;
    sum = __fadd_rn(sum, e);
  }
  // A butterfly: lane l adds a + b where its partner adds b + a, so every lane holds the same sum.
  for (int o = 16; o > 0; o >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(kFull, sum, o));
  for (int j = lane; j < n; j += 32) p[j] = __fdiv_rn(p[j], sum);
  for (int j = n + lane; j < S; j += 32) p[j] = 0.0f;
  if (lane == 0) lse[pr.r * H + pr.h] = __fadd_rn(mx, logf(sum));
}

// D[r, h] = Σ_d dO[r, h·dv + d] · O[r, h·dv + d], d increasing (nn's loop).
__global__ void row_dot_kernel(const float* __restrict__ attn, const float* __restrict__ d_attn, std::size_t n,
                               int dv, float* __restrict__ D) {
  const std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float* o = attn + i * dv;
  const float* g = d_attn + i * dv;
  float acc = 0.0f;
  for (int d = 0; d < dv; ++d) acc = __fadd_rn(acc, __fmul_rn(g[d], o[d]));
  D[i] = acc;
}

// From the recomputed raw scores (in P) and dP = dO·Vᵀ (in dS), one block per row:
// p_j = exp(raw_j·scale − lse), dS_j = p_j·(dP_j − D)·scale for j <= i; both 0 for j > i.
__global__ void softmax_backward_kernel(float* __restrict__ P, float* __restrict__ dS, int S, int H, long long z0,
                                        float scale, const float* __restrict__ lse, const float* __restrict__ D) {
  const std::size_t row = blockIdx.x;
  const PackedRow pr = packed_row(row, S, H, z0);
  const float l = lse[pr.r * H + pr.h];
  const float dsum = D[pr.r * H + pr.h];
  float* p = P + row * S;
  float* ds = dS + row * S;
  for (int j = threadIdx.x; j < S; j += blockDim.x) {
    if (j <= pr.s) {
      const float pj = expf(__fsub_rn(__fmul_rn(p[j], scale), l));
      p[j] = pj;
      ds[j] = __fmul_rn(__fmul_rn(pj, __fsub_rn(ds[j], dsum)), scale);
    } else {
      p[j] = 0.0f;
      ds[j] = 0.0f;
    }
  }
}

void gather_heads(const float* src, std::size_t ld_src, int head_stride, int width, const AttentionShape& s,
                  long long z0, int zc, float* dst, int ld_dst, cudaStream_t stream) {
  if (width <= 0 || zc <= 0) return;
  const unsigned grid = blocks_for(idx(zc) * s.seq_len, "gather_heads");
  gather_heads_kernel<<<grid, 64, 0, stream>>>(src, ld_src, head_stride, width, s.seq_len, s.heads, z0, dst, ld_dst);
  check_launch("gather_heads");
}

void scatter_heads(const float* src, int ld_src, int width, const AttentionShape& s, long long z0, int zc, float* dst,
                   std::size_t ld_dst, int head_stride, cudaStream_t stream) {
  if (width <= 0 || zc <= 0) return;
  const unsigned grid = blocks_for(idx(zc) * s.seq_len, "scatter_heads");
  scatter_heads_kernel<<<grid, 64, 0, stream>>>(src, ld_src, width, s.seq_len, s.heads, z0, dst, ld_dst, head_stride);
  check_launch("scatter_heads");
}

void check_core_shape(const AttentionShape& s, int chunk, const char* what) {
  require(s.rows >= 0 && s.heads > 0 && s.nope >= 0 && s.rope >= 0 && s.qk() > 0 && s.dv > 0 && s.seq_len > 0 &&
              s.rows % s.seq_len == 0,
          std::string(what) + ": bad shape");
  require(chunk >= 1, std::string(what) + ": chunk must be >= 1");
}

std::size_t round_up(std::size_t n) { return (n + 31) / 32 * 32; }  // 128 bytes of floats

// Offsets (floats) of the core's sub-buffers in the workspace.
template <class T>
struct CoreParts {
  T d{}, qg{}, kg{}, vg{}, og{}, dog{}, p{}, ds{}, dqg{}, dkg{}, dvg{};
};
struct CoreLayout : CoreParts<std::size_t> {
  std::size_t total = 0;
  // The parts' addresses in a workspace of `total` floats (parts a pass does not use: offset 0).
  CoreParts<float*> in(float* ws) const {
    return {ws + d, ws + qg, ws + kg, ws + vg, ws + og, ws + dog, ws + p, ws + ds, ws + dqg, ws + dkg, ws + dvg};
  }
};

CoreLayout core_layout(const AttentionShape& s, int chunk, bool backward) {
  CoreLayout L;
  std::size_t at = 0;
  auto take = [&](std::size_t n) {
    const std::size_t here = at;
    at += round_up(n);
    return here;
  };
  const std::size_t zs = idx(chunk) * s.seq_len;
  const std::size_t qk = s.qk(), dv = s.dv, S = s.seq_len;
  if (backward) L.d = take(idx(s.rows) * s.heads);
  L.qg = take(zs * qk);
  L.kg = take(zs * qk);
  L.vg = take(zs * dv);
  L.p = take(zs * S);
  if (backward) {
    L.dog = take(zs * dv);
    L.ds = take(zs * S);
    L.dqg = take(zs * qk);
    L.dkg = take(zs * qk);
    L.dvg = take(zs * dv);
  } else {
    L.og = take(zs * dv);
  }
  L.total = at;
  return L;
}

// The chunk's Q [zc, S, qk] and K [zc, S, qk] = [k_nope | k_pe] (k_pe repeated per head), V [zc, S, dv].
void gather_qkv(const AttentionShape& s, long long z0, int zc, const float* q, const float* kv, const float* k_pe,
                float* Qg, float* Kg, float* Vg, cudaStream_t stream) {
  const int qk = s.qk(), dkv = s.nope + s.dv;
  const std::size_t ldq = idx(s.heads) * qk, ldkv = idx(s.heads) * dkv;
  gather_heads(q, ldq, qk, qk, s, z0, zc, Qg, qk, stream);
  gather_heads(kv, ldkv, dkv, s.nope, s, z0, zc, Kg, qk, stream);
  gather_heads(k_pe, idx(s.rope), 0, s.rope, s, z0, zc, Kg + s.nope, qk, stream);
  gather_heads(kv + s.nope, ldkv, dkv, s.dv, s, z0, zc, Vg, s.dv, stream);
}

}  // namespace

// ---------------------------------------------------------------- public pieces

std::vector<float> rope_cos_sin(int seq_len, int width, double theta) {
  require(seq_len > 0, "rope_cos_sin: seq_len must be > 0");
  require(width > 0 && width % 2 == 0, "rope_cos_sin: width must be even and > 0");
  const int half = width / 2;
  std::vector<double> inv_freq(idx(half));
  for (int i = 0; i < half; ++i)
    inv_freq[i] = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(width));
  const std::size_t plane = idx(seq_len) * half;
  std::vector<float> t(2 * plane);
  for (int p = 0; p < seq_len; ++p) {
    const double pos = static_cast<double>(p);
    for (int i = 0; i < half; ++i) {
      t[idx(p) * half + i] = static_cast<float>(std::cos(pos * inv_freq[i]));
      t[plane + idx(p) * half + i] = static_cast<float>(std::sin(pos * inv_freq[i]));
    }
  }
  return t;
}

void rope_apply(const float* in, int ld_in, float* out, int ld_out, int rows, int width, int count, int stride,
                int seq_len, const float* table, bool inverse, cudaStream_t stream) {
  require(width > 0 && width % 2 == 0 && width <= kRopeSmem, "rope_apply: width must be even, in (0, 4096]");
  require(count >= 0 && (count <= 1 || stride >= width), "rope_apply: groups overlap (stride < width)");
  require(seq_len > 0 && rows >= 0 && rows % seq_len == 0, "rope_apply: rows must be a multiple of seq_len > 0");
  if (rows == 0 || count == 0) return;
  rope_kernel<<<blocks_for(idx(rows), "rope_apply"), 128, 0, stream>>>(
      in, idx(ld_in), out, idx(ld_out), width, count, stride, seq_len, table,
      inverse ? 1 : 0);
  check_launch("rope_apply");
}

void rmsnorm_weight_accumulate(const float* x, int ld_x, const float* dy, int ld_dy, const float* inv_rms, int rows,
                               int cols, float* dw, cudaStream_t stream) {
  require(rows >= 0 && cols >= 0 && ld_x >= cols && ld_dy >= cols, "rmsnorm_weight_accumulate: bad shape");
  if (rows == 0 || cols == 0) return;
  rmsnorm_weight_accumulate_kernel<<<static_cast<unsigned>(ceil_div(cols, 128)), 128, 0, stream>>>(
      x, idx(ld_x), dy, idx(ld_dy), inv_rms, rows, cols, dw);
  check_launch("rmsnorm_weight_accumulate");
}

int attention_core_chunk(const AttentionShape& s, std::size_t budget_bytes, bool backward) {
  check_core_shape(s, 1, "attention_core_chunk");
  const std::size_t S = s.seq_len, qk = s.qk(), dv = s.dv;
  const std::size_t per_pair = backward ? S * (4 * qk + 3 * dv + 2 * S) : S * (2 * qk + 2 * dv + S);
  const std::size_t pairs = idx(s.sequences()) * s.heads;
  std::size_t z = budget_bytes / (sizeof(float) * per_pair);
  z = std::min(z, pairs);
  z = std::min(z, idx(INT_MAX));
  return static_cast<int>(std::max<std::size_t>(z, 1));
}

std::size_t attention_core_workspace(const AttentionShape& s, int chunk, bool backward) {
  check_core_shape(s, chunk, "attention_core_workspace");
  return core_layout(s, chunk, backward).total;
}

void attention_core_forward(Blas& blas, const AttentionShape& s, int chunk, const float* q, const float* kv,
                            const float* k_pe, float* workspace, float* attn, float* lse) {
  check_core_shape(s, chunk, "attention_core_forward");
  if (s.rows == 0) return;
  cudaStream_t stream = blas.stream();
  const int S = s.seq_len, H = s.heads, qk = s.qk(), dv = s.dv;
  const long long sq = static_cast<long long>(S) * S, sqk = static_cast<long long>(S) * qk,
                  sdv = static_cast<long long>(S) * dv;
  const CoreParts<float*> w = core_layout(s, chunk, false).in(workspace);
  const long long pairs = static_cast<long long>(s.sequences()) * H;
  for (long long z0 = 0; z0 < pairs; z0 += chunk) {
    const int zc = static_cast<int>(std::min<long long>(chunk, pairs - z0));
    gather_qkv(s, z0, zc, q, kv, k_pe, w.qg, w.kg, w.vg, stream);
    // raw scores [zc, S, S] = Q·Kᵀ (one dot product over [nope | rope] per entry, as nn)
    blas.gemm_strided_batched(false, true, S, S, qk, 1.0f, w.qg, qk, sqk, w.kg, qk, sqk, 0.0f, w.p, S, sq, zc);
    const std::size_t rows = idx(zc) * S;
    causal_softmax_kernel<<<blocks_for((rows + kSoftmaxWarps - 1) / kSoftmaxWarps, "causal_softmax"),
                            32 * kSoftmaxWarps, 0, stream>>>(w.p, rows, S, H, z0, s.scale, lse);
    check_launch("causal_softmax");
    // O = P·V; P is zero above the diagonal, so each row sums over its own prefix only
    blas.gemm_strided_batched(false, false, S, dv, S, 1.0f, w.p, S, sq, w.vg, dv, sdv, 0.0f, w.og, dv, sdv, zc);
    scatter_heads(w.og, dv, dv, s, z0, zc, attn, idx(H) * dv, dv, stream);
  }
}

void attention_core_backward(Blas& blas, const AttentionShape& s, int chunk, const float* q, const float* kv,
                             const float* k_pe, const float* attn, const float* lse, const float* d_attn,
                             float* workspace, float* dq, float* dkv, float* dk_pe) {
  check_core_shape(s, chunk, "attention_core_backward");
  if (s.rows == 0) return;
  cudaStream_t stream = blas.stream();
  const int S = s.seq_len, H = s.heads, qk = s.qk(), dv = s.dv, dkvw = s.nope + s.dv;
  const long long sq = static_cast<long long>(S) * S, sqk = static_cast<long long>(S) * qk,
                  sdv = static_cast<long long>(S) * dv;
  const CoreParts<float*> w = core_layout(s, chunk, true).in(workspace);

  const std::size_t rh = idx(s.rows) * H;
  row_dot_kernel<<<blocks_for((rh + 255) / 256, "row_dot"), 256, 0, stream>>>(attn, d_attn, rh, dv, w.d);
  check_launch("row_dot");
  if (s.rope > 0)
    check(cudaMemsetAsync(dk_pe, 0, sizeof(float) * idx(s.rows) * s.rope, stream),
          "attention_core_backward: zero dk_pe");

  const std::size_t ldq = idx(H) * qk, ldkv = idx(H) * dkvw,
                    ldo = idx(H) * dv;
  const long long pairs = static_cast<long long>(s.sequences()) * H;
  for (long long z0 = 0; z0 < pairs; z0 += chunk) {
    const int zc = static_cast<int>(std::min<long long>(chunk, pairs - z0));
    gather_qkv(s, z0, zc, q, kv, k_pe, w.qg, w.kg, w.vg, stream);
    gather_heads(d_attn, ldo, dv, dv, s, z0, zc, w.dog, dv, stream);
    blas.gemm_strided_batched(false, true, S, S, qk, 1.0f, w.qg, qk, sqk, w.kg, qk, sqk, 0.0f, w.p, S, sq, zc);
    blas.gemm_strided_batched(false, true, S, S, dv, 1.0f, w.dog, dv, sdv, w.vg, dv, sdv, 0.0f, w.ds, S, sq, zc);
    const std::size_t rows = idx(zc) * S;
    softmax_backward_kernel<<<blocks_for(rows, "softmax_backward"), 128, 0, stream>>>(w.p, w.ds, S, H, z0, s.scale,
                                                                                       lse, w.d);
    check_launch("softmax_backward");
    // dV = Pᵀ·dO, dQ = dS·K, dK = dSᵀ·Q (dS is the gradient at the unscaled dot product)
    blas.gemm_strided_batched(true, false, S, dv, S, 1.0f, w.p, S, sq, w.dog, dv, sdv, 0.0f, w.dvg, dv, sdv, zc);
    blas.gemm_strided_batched(false, false, S, qk, S, 1.0f, w.ds, S, sq, w.kg, qk, sqk, 0.0f, w.dqg, qk, sqk, zc);
    blas.gemm_strided_batched(true, false, S, qk, S, 1.0f, w.ds, S, sq, w.qg, qk, sqk, 0.0f, w.dkg, qk, sqk, zc);
    scatter_heads(w.dqg, qk, qk, s, z0, zc, dq, ldq, qk, stream);
    scatter_heads(w.dkg, qk, s.nope, s, z0, zc, dkv, ldkv, dkvw, stream);
    scatter_heads(w.dvg, dv, dv, s, z0, zc, dkv + s.nope, ldkv, dkvw, stream);
    if (s.rope > 0) {
      const long long b_first = z0 / H, b_last = (z0 + zc - 1) / H;
      const std::size_t grid = idx(b_last - b_first + 1) * S;
      sum_heads_kernel<<<blocks_for(grid, "sum_heads"), 64, 0, stream>>>(w.dkg + s.nope, qk, s.rope, S, H, z0,
                                                                         z0 + zc, dk_pe);
      check_launch("sum_heads");
    }
  }
}

// ---------------------------------------------------------------- MlaDevice

namespace {

template <class P>
void check_tensors(const MlaConfig& c, const MlaTensors<P>& w, const char* what) {
  const std::string pre = std::string("MlaDevice: ") + what + ".";
  if (c.q_lora_rank > 0) {
    require(w.q_a_proj != nullptr, pre + "q_a_proj is null");
    require(w.q_a_layernorm != nullptr, pre + "q_a_layernorm is null");
    require(w.q_b_proj != nullptr, pre + "q_b_proj is null");
  } else {
    require(w.q_proj != nullptr, pre + "q_proj is null");
  }
  require(w.kv_a_proj_with_mqa != nullptr, pre + "kv_a_proj_with_mqa is null");
  require(w.kv_a_layernorm != nullptr, pre + "kv_a_layernorm is null");
  require(w.kv_b_proj != nullptr, pre + "kv_b_proj is null");
  require(w.o_proj != nullptr, pre + "o_proj is null");
}

void copy_async(float* dst, const float* src, std::size_t count, cudaStream_t stream, const char* what) {
  if (count == 0) return;
  check(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice, stream), what);
}

// dst[r, 0:width] = src[r, 0:width] for rows r, row strides ld_dst / ld_src (floats).
void copy_cols(float* dst, int ld_dst, const float* src, int ld_src, int width, int rows, cudaStream_t stream,
               const char* what) {
  if (rows == 0 || width == 0) return;
  check(cudaMemcpy2DAsync(dst, sizeof(float) * ld_dst, src, sizeof(float) * ld_src, sizeof(float) * width,
                          idx(rows), cudaMemcpyDeviceToDevice, stream),
        what);
}

}  // namespace

MlaDevice::MlaDevice(const MlaConfig& c, Blas& blas, DeviceLinear& linear, std::size_t core_budget_bytes)
    : c_(c), blas_(blas), lin_(linear), core_budget_(core_budget_bytes) {
  require(c.hidden > 0 && c.heads > 0 && c.kv_lora_rank > 0 && c.qk_rope > 0 && c.qk_rope % 2 == 0 &&
              c.qk_rope <= kRopeSmem && c.v_head > 0 && c.qk_nope >= 0 && c.q_lora_rank >= 0,
          "MlaDevice: bad config");
  // The kernels and GEMM shapes index in int.
  constexpr int64_t kMaxDim = int64_t{1} << 30;
  for (int64_t d : {c.hidden, c.heads, c.q_lora_rank, c.kv_lora_rank, c.qk_nope, c.qk_rope, c.v_head,
                    c.heads * c.qk_head(), c.heads * c.v_head})
    require(d <= kMaxDim, "MlaDevice: a dimension of the config is out of the device's int range");
  // one stream orders the core's GEMMs, the kernels and the projections' GEMMs and scratch reuse
  require(linear.stream() == blas.stream(), "MlaDevice: linear and blas must share one stream");
}

AttentionShape MlaDevice::core_shape(int rows, int seq_len) const {
  AttentionShape s;
  s.rows = rows;
  s.heads = c_.heads;
  s.nope = c_.qk_nope;
  s.rope = c_.qk_rope;
  s.dv = c_.v_head;
  s.seq_len = seq_len;
  s.scale = static_cast<float>(c_.softmax_scale());  // the CPU's static_cast<T>, T = float
  return s;
}

int MlaDevice::core_chunk(int rows, int seq_len, bool backward) const {
  return attention_core_chunk(core_shape(rows, seq_len), core_budget_, backward);
}

// A buffer about to be replaced may still be read by work queued on the stream: wait for it first.
float* MlaDevice::resize(DeviceBuffer<float>& b, std::size_t count) {
  if (b.size() != count) {
    check(cudaStreamSynchronize(stream()), "MlaDevice: resize buffer");
    b = DeviceBuffer<float>(count);
  }
  return b.get();
}

const float* MlaDevice::rope_table(int seq_len) {
  if (seq_len != rope_seq_len_) {
    check(cudaStreamSynchronize(stream()), "MlaDevice: replace RoPE table");
    rope_host_ = rope_cos_sin(seq_len, c_.qk_rope, c_.rope_theta);
    rope_dev_ = DeviceBuffer<float>(rope_host_.size());
    // rope_host_ outlives the copy (a member), and the copy is ordered before the kernels using it
    check(cudaMemcpyAsync(rope_dev_.get(), rope_host_.data(), rope_host_.size() * sizeof(float),
                          cudaMemcpyHostToDevice, stream()),
          "MlaDevice: upload RoPE table");
    rope_seq_len_ = seq_len;
  }
  return rope_dev_.get();
}

// ---- the projections: the only weight GEMMs, in the DeviceLinear's numerics

void MlaDevice::prepare_weights(const MlaDeviceWeights& w) {
  clear_prepared_weights();
  if (lin_.numerics() != Numerics::fp8) return;
  check_tensors(c_, w, "weights");
  const int H = c_.heads, qk = c_.qk_head(), dkv = c_.qk_nope + c_.v_head;
  const int kva = c_.kv_lora_rank + c_.qk_rope;
  auto prepare = [&](MlaProj which, const float* W, int n, int k) {
    Prepared& p = prepared_[static_cast<int>(which)];
    // grow-only buffers, written on stream(): ordered after queued reads of the previous codes
    lin_.quantize_weight(ConstDeviceMat(W, n, k), p.q);
    p.src = W;
  };
  if (c_.q_lora_rank > 0) {
    prepare(MlaProj::q_a, w.q_a_proj, c_.q_lora_rank, c_.hidden);
    prepare(MlaProj::q_b, w.q_b_proj, H * qk, c_.q_lora_rank);
  } else {
    prepare(MlaProj::q, w.q_proj, H * qk, c_.hidden);
  }
  prepare(MlaProj::kv_a, w.kv_a_proj_with_mqa, kva, c_.hidden);
  prepare(MlaProj::kv_b, w.kv_b_proj, H * dkv, c_.kv_lora_rank);
  prepare(MlaProj::o, w.o_proj, c_.hidden, H * c_.v_head);
}

void MlaDevice::clear_prepared_weights() {
  for (Prepared& p : prepared_) p.src = nullptr;
}

const Fp8Weight* MlaDevice::prepared_weight(MlaProj which) const {
  const Prepared& p = prepared_[static_cast<int>(which)];
  return p.src != nullptr ? &p.q : nullptr;
}

LinearWeight MlaDevice::weight(MlaProj which, const float* W, int n, int k) const {
  const Prepared& p = prepared_[static_cast<int>(which)];
  const bool cached = lin_.numerics() == Numerics::fp8 && p.src != nullptr && p.src == W;
  return LinearWeight(ConstDeviceMat(W, n, k), cached ? &p.q : nullptr);
}

void MlaDevice::project(MlaProj which, const float* x, const float* W, int m, int n, int k, float* y) {
  lin_.forward(ConstDeviceMat(x, m, k), weight(which, W, n, k), DeviceMat(y, m, n));
}

void MlaDevice::project_dgrad(MlaProj which, const float* dy, const float* W, int m, int n, int k, float* dx,
                              bool accumulate) {
  lin_.backward_input(ConstDeviceMat(dy, m, n), weight(which, W, n, k), DeviceMat(dx, m, k), accumulate);
}

void MlaDevice::project_wgrad(MlaProj /*which*/, const float* dy, const float* x, int m, int n, int k, float* dW) {
  lin_.backward_weight(ConstDeviceMat(dy, m, n), ConstDeviceMat(x, m, k), DeviceMat(dW, n, k));
}

// nn's project_up: norms, up-projections, RoPE (q in place; k_pe out of kv_a into p.k_pe).
void MlaDevice::project_up(const MlaDeviceWeights& w, const float* x, const float* q_a, const float* kv_a, int rows,
                           int seq_len, const Projected& p) {
  cudaStream_t st = stream();
  const int H = c_.heads, qk = c_.qk_head(), dkv = c_.qk_nope + c_.v_head;
  const int kva = c_.kv_lora_rank + c_.qk_rope;
  const float eps = static_cast<float>(c_.rms_eps);
  const float* table = rope_table(seq_len);
  if (c_.q_lora_rank > 0) {
    rmsnorm_forward(q_a, w.q_a_layernorm, rows, c_.q_lora_rank, eps, p.q_a_normed, p.q_inv_rms, st);
    project(MlaProj::q_b, p.q_a_normed, w.q_b_proj, rows, H * qk, c_.q_lora_rank, p.q);
  } else {
    project(MlaProj::q, x, w.q_proj, rows, H * qk, c_.hidden, p.q);
  }
  copy_cols(p.c_kv, c_.kv_lora_rank, kv_a, kva, c_.kv_lora_rank, rows, st, "MlaDevice: c_kv");
  rmsnorm_forward(p.c_kv, w.kv_a_layernorm, rows, c_.kv_lora_rank, eps, p.kv_a_normed, p.kv_inv_rms, st);
  project(MlaProj::kv_b, p.kv_a_normed, w.kv_b_proj, rows, H * dkv, c_.kv_lora_rank, p.kv);
  rope_apply(p.q + c_.qk_nope, H * qk, p.q + c_.qk_nope, H * qk, rows, c_.qk_rope, H, qk, seq_len, table, false, st);
  rope_apply(kv_a + c_.kv_lora_rank, kva, p.k_pe, c_.qk_rope, rows, c_.qk_rope, 1, c_.qk_rope, seq_len, table, false,
             st);
}

void MlaDevice::forward(const MlaDeviceWeights& w, const float* x, int rows, int seq_len, float* out,
                        MlaDeviceSaved* saved) {
  check_tensors(c_, w, "weights");
  require(seq_len > 0 && rows >= 0 && rows % seq_len == 0, "MlaDevice::forward: rows must be a multiple of seq_len > 0");
  require(rows == 0 || (x != nullptr && out != nullptr), "MlaDevice::forward: x and out must be device pointers");
  cudaStream_t st = stream();
  const std::size_t M = idx(rows);
  const int H = c_.heads, qk = c_.qk_head(), dkv = c_.qk_nope + c_.v_head;
  const int kva = c_.kv_lora_rank + c_.qk_rope, ql = c_.q_lora_rank, kl = c_.kv_lora_rank;
  const bool keep = saved != nullptr && !c_.recompute;
  MlaDeviceSaved& sv = saved ? *saved : scratch_saved_;

  if (saved) {
    resize(sv.x, M * c_.hidden);
    copy_async(sv.x.get(), x, M * c_.hidden, st, "MlaDevice: save x");
  }
  float* q_a = resize(sv.q_a, ql > 0 ? M * ql : 0);
  float* q_inv = resize(sv.q_a_inv_rms, ql > 0 ? M : 0);
  float* kv_a = resize(sv.kv_a, M * kva);
  float* kv_inv = resize(sv.kv_a_inv_rms, M);
  float* attn = resize(sv.attn, M * H * c_.v_head);
  float* lse = resize(sv.lse, M * H);
  Projected p;
  p.q_inv_rms = q_inv;
  p.kv_inv_rms = kv_inv;
  p.c_kv = s_c_kv_.reserve(M * kl, stream());
  if (keep) {
    p.q_a_normed = resize(sv.q_a_normed, ql > 0 ? M * ql : 0);
    p.kv_a_normed = resize(sv.kv_a_normed, M * kl);
    p.q = resize(sv.q, M * H * qk);
    p.kv = resize(sv.kv, M * H * dkv);
    p.k_pe = resize(sv.k_pe, M * c_.qk_rope);
  } else {
    if (saved) {
      for (DeviceBuffer<float>* b : {&sv.q_a_normed, &sv.kv_a_normed, &sv.q, &sv.kv, &sv.k_pe}) resize(*b, 0);
    }
    p.q_a_normed = s_q_a_normed_.reserve(ql > 0 ? M * ql : 0, stream());
    p.kv_a_normed = s_kv_a_normed_.reserve(M * kl, stream());
    p.q = s_q_.reserve(M * H * qk, stream());
    p.kv = s_kv_.reserve(M * H * dkv, stream());
    p.k_pe = s_k_pe_.reserve(M * c_.qk_rope, stream());
  }
  sv.rows = rows;
  sv.seq_len = seq_len;
  sv.kept = keep;
  if (rows == 0) return;

  if (ql > 0) project(MlaProj::q_a, x, w.q_a_proj, rows, ql, c_.hidden, q_a);
  project(MlaProj::kv_a, x, w.kv_a_proj_with_mqa, rows, kva, c_.hidden, kv_a);
  project_up(w, x, q_a, kv_a, rows, seq_len, p);
  const AttentionShape cs = core_shape(rows, seq_len);
  const int chunk = attention_core_chunk(cs, core_budget_, false);
  float* ws = core_ws_.reserve(attention_core_workspace(cs, chunk, false), stream());
  attention_core_forward(blas_, cs, chunk, p.q, p.kv, p.k_pe, ws, attn, lse);
  project(MlaProj::o, attn, w.o_proj, rows, c_.hidden, H * c_.v_head, out);
}

void MlaDevice::backward_input(const MlaDeviceWeights& w, const MlaDeviceSaved& s, const float* dy,
                               MlaDeviceInputGrad& g) {
  check_tensors(c_, w, "weights");
  const int rows = s.rows;
  const std::size_t M = idx(rows);
  const int H = c_.heads, qk = c_.qk_head(), dkv = c_.qk_nope + c_.v_head;
  const int kva = c_.kv_lora_rank + c_.qk_rope, ql = c_.q_lora_rank, kl = c_.kv_lora_rank;
  require(s.seq_len > 0 && rows >= 0 && rows % s.seq_len == 0 && s.x.size() == M * c_.hidden &&
              s.q_a.size() == (ql > 0 ? M * ql : 0) && s.kv_a.size() == M * kva &&
              s.attn.size() == M * H * c_.v_head && s.lse.size() == M * H,
          "MlaDevice::backward_input: saved state does not match the config (forward with a saved?)");
  require(!s.kept || (s.q.size() == M * H * qk && s.kv.size() == M * H * dkv && s.k_pe.size() == M * c_.qk_rope &&
                      s.kv_a_normed.size() == M * kl && s.q_a_normed.size() == (ql > 0 ? M * ql : 0)),
          "MlaDevice::backward_input: kept tensors missing");
  require(rows == 0 || dy != nullptr, "MlaDevice::backward_input: dy must be a device pointer");
  cudaStream_t st = stream();
  const float eps = static_cast<float>(c_.rms_eps);

  resize(g.dx, M * c_.hidden);
  resize(g.d_q, M * H * qk);
  resize(g.q_a_normed, ql > 0 ? M * ql : 0);
  resize(g.d_q_a_normed, ql > 0 ? M * ql : 0);
  resize(g.d_q_a, ql > 0 ? M * ql : 0);
  resize(g.d_kv_a, M * kva);
  resize(g.kv_a_normed, M * kl);
  resize(g.d_kv_a_normed, M * kl);
  resize(g.d_kv, M * H * dkv);
  if (rows == 0) return;
  const float* table = rope_table(s.seq_len);

  float* c_kv = s_c_kv_.reserve(M * kl, stream());
  const float *q, *kv, *k_pe;
  if (s.kept) {
    copy_async(g.q_a_normed.get(), s.q_a_normed.get(), g.q_a_normed.size(), st, "MlaDevice: q_a_normed");
    copy_async(g.kv_a_normed.get(), s.kv_a_normed.get(), g.kv_a_normed.size(), st, "MlaDevice: kv_a_normed");
    copy_cols(c_kv, kl, s.kv_a.get(), kva, kl, rows, st, "MlaDevice: c_kv");
    q = s.q.get();
    kv = s.kv.get();
    k_pe = s.k_pe.get();
  } else {
    Projected p;
    p.q_a_normed = g.q_a_normed.get();
    p.c_kv = c_kv;
    p.kv_a_normed = g.kv_a_normed.get();
    p.q = s_q_.reserve(M * H * qk, stream());
    p.kv = s_kv_.reserve(M * H * dkv, stream());
    p.k_pe = s_k_pe_.reserve(M * c_.qk_rope, stream());
    project_up(w, s.x.get(), s.q_a.get(), s.kv_a.get(), rows, s.seq_len, p);
    q = p.q;
    kv = p.kv;
    k_pe = p.k_pe;
  }

  float* d_attn = s_d_attn_.reserve(M * H * c_.v_head, stream());
  project_dgrad(MlaProj::o, dy, w.o_proj, rows, c_.hidden, H * c_.v_head, d_attn, false);
  float* dk_pe = s_dk_pe_.reserve(M * c_.qk_rope, stream());
  const AttentionShape cs = core_shape(rows, s.seq_len);
  const int chunk = attention_core_chunk(cs, core_budget_, true);
  float* ws = core_ws_.reserve(attention_core_workspace(cs, chunk, true), stream());
  attention_core_backward(blas_, cs, chunk, q, kv, k_pe, s.attn.get(), s.lse.get(), d_attn, ws, g.d_q.get(),
                          g.d_kv.get(), dk_pe);
  // back through RoPE (the rotation's transpose), to the projections' outputs
  float* d_q = g.d_q.get();
  rope_apply(d_q + c_.qk_nope, H * qk, d_q + c_.qk_nope, H * qk, rows, c_.qk_rope, H, qk, s.seq_len, table, true, st);
  rope_apply(dk_pe, c_.qk_rope, g.d_kv_a.get() + kl, kva, rows, c_.qk_rope, 1, c_.qk_rope, s.seq_len, table, true,
             st);
  // query path
  if (ql > 0) {
    project_dgrad(MlaProj::q_b, d_q, w.q_b_proj, rows, H * qk, ql, g.d_q_a_normed.get(), false);
    rmsnorm_backward_input(s.q_a.get(), w.q_a_layernorm, g.d_q_a_normed.get(), rows, ql, eps, g.d_q_a.get(), st);
    project_dgrad(MlaProj::q_a, g.d_q_a.get(), w.q_a_proj, rows, ql, c_.hidden, g.dx.get(), false);
  } else {
    project_dgrad(MlaProj::q, d_q, w.q_proj, rows, H * qk, c_.hidden, g.dx.get(), false);
  }
  // key/value path
  project_dgrad(MlaProj::kv_b, g.d_kv.get(), w.kv_b_proj, rows, H * dkv, kl, g.d_kv_a_normed.get(), false);
  float* d_c_kv = s_d_c_kv_.reserve(M * kl, stream());
  rmsnorm_backward_input(c_kv, w.kv_a_layernorm, g.d_kv_a_normed.get(), rows, kl, eps, d_c_kv, st);
  copy_cols(g.d_kv_a.get(), kva, d_c_kv, kl, kl, rows, st, "MlaDevice: d_kv_a");
  project_dgrad(MlaProj::kv_a, g.d_kv_a.get(), w.kv_a_proj_with_mqa, rows, kva, c_.hidden, g.dx.get(), true);
}

void MlaDevice::backward_weight(const MlaDeviceSaved& s, const MlaDeviceInputGrad& g, const float* dy,
                                const MlaDeviceGrads& grads) {
  check_tensors(c_, grads, "grads");
  const int rows = s.rows;
  const std::size_t M = idx(rows);
  const int H = c_.heads, qk = c_.qk_head(), dkv = c_.qk_nope + c_.v_head;
  const int kva = c_.kv_lora_rank + c_.qk_rope, ql = c_.q_lora_rank, kl = c_.kv_lora_rank;
  require(rows >= 0 && s.x.size() == M * c_.hidden && s.kv_a.size() == M * kva && s.attn.size() == M * H * c_.v_head &&
              s.kv_a_inv_rms.size() == M && s.q_a_inv_rms.size() == (ql > 0 ? M : 0),
          "MlaDevice::backward_weight: saved state does not match the config");
  require(g.d_q.size() == M * H * qk && g.d_kv.size() == M * H * dkv && g.d_kv_a.size() == M * kva &&
              g.kv_a_normed.size() == M * kl && g.d_kv_a_normed.size() == M * kl &&
              g.q_a_normed.size() == (ql > 0 ? M * ql : 0) && g.d_q_a.size() == (ql > 0 ? M * ql : 0),
          "MlaDevice::backward_weight: input gradients do not match the saved state");
  require(rows == 0 || dy != nullptr, "MlaDevice::backward_weight: dy must be a device pointer");
  if (rows == 0) return;
  cudaStream_t st = stream();
  project_wgrad(MlaProj::o, dy, s.attn.get(), rows, c_.hidden, H * c_.v_head, grads.o_proj);
  if (ql > 0) {
    project_wgrad(MlaProj::q_b, g.d_q.get(), g.q_a_normed.get(), rows, H * qk, ql, grads.q_b_proj);
    rmsnorm_weight_accumulate(s.q_a.get(), ql, g.d_q_a_normed.get(), ql, s.q_a_inv_rms.get(), rows, ql,
                              grads.q_a_layernorm, st);
    project_wgrad(MlaProj::q_a, g.d_q_a.get(), s.x.get(), rows, ql, c_.hidden, grads.q_a_proj);
  } else {
    project_wgrad(MlaProj::q, g.d_q.get(), s.x.get(), rows, H * qk, c_.hidden, grads.q_proj);
  }
  project_wgrad(MlaProj::kv_b, g.d_kv.get(), g.kv_a_normed.get(), rows, H * dkv, kl, grads.kv_b_proj);
  // c_kv is kv_a's left kv_lora_rank columns: read in place (row stride kva)
  rmsnorm_weight_accumulate(s.kv_a.get(), kva, g.d_kv_a_normed.get(), kl, s.kv_a_inv_rms.get(), rows, kl,
                            grads.kv_a_layernorm, st);
  project_wgrad(MlaProj::kv_a, g.d_kv_a.get(), s.x.get(), rows, kva, c_.hidden, grads.kv_a_proj_with_mqa);
}

}  // namespace tandem::cuda
