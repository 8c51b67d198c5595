// The DeepSeek-V3 router on the device; the contract (and its bit-identity to exec/ops/router/router.cpp)
// is in router.h. One warp per token: the token's biased scores (and group scores, picks) are
// staged in the warp's slice of dynamic shared memory; each top-k is found by k rounds of a warp
// arg-max restricted to the candidates ranked after the previous round's winner, so no "taken"
// state is needed and the result is the CPU's rank order whatever the reduction tree.
#include "exec/ops/router/router_cuda.h"

#include <climits>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::grid_for;

constexpr unsigned kFull = 0xFFFFFFFFu;
constexpr int kNone = INT_MAX;  // "no candidate": loses to every real (value, index) but a NaN
constexpr int kMaxWarps = 8;
constexpr std::size_t kSharedBudget = 32 * 1024;  // well under the 48 KB usable without an opt-in

// exec/ops's Better: a ranks before b when its score is higher, or equal with a lower index.
__device__ __forceinline__ bool beats(float va, int ia, float vb, int ib) {
  return va > vb || (va == vb && ia < ib);
}

struct Cand {
  float v;
  int i;
};

// The warp's best candidate. On non-NaN input the order is total, so every lane ends with the same
// winner; lane 0's is broadcast anyway so the warp agrees even on (unsupported) NaN input.
__device__ __forceinline__ Cand warp_best(Cand c) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFull, c.v, o);
    const int oi = __shfl_xor_sync(kFull, c.i, o);
    if (beats(ov, oi, c.v, c.i)) c = Cand{ov, oi};
  }
  c.v = __shfl_sync(kFull, c.v, 0);
  c.i = __shfl_sync(kFull, c.i, 0);
  return c;
}

__global__ void router_sigmoid_kernel(const float* logits, std::size_t n, float* scores) {
  for (std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x) {
    // T(1) / (T(1) + std::exp(-z)) of exec/ops, exp(−z) rounded once to FP32 from double.
    const float e = __double2float_rn(exp(-static_cast<double>(logits[i])));
    scores[i] = __fdiv_rn(1.0f, __fadd_rn(1.0f, e));
  }
}

struct SelectArgs {
  int E, G, topk_group, K;
  float rsf;
  bool norm;
};

// Shared memory per warp: b[E] (biased scores), gs[G] (group scores), picks[K] (int).
__global__ void router_select_kernel(const float* __restrict__ scores, const float* __restrict__ bias, int tokens,
                                     SelectArgs a, int32_t* __restrict__ expert, float* __restrict__ gate) {
  extern __shared__ float smem[];
  const int warps = static_cast<int>(blockDim.x) / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * warps + warp;
  if (t >= tokens) return;  // whole warps only; no block-level barrier below
  const int E = a.E, G = a.G, K = a.K, per = E / G;
  float* b = smem + idx(warp) * (E + G + K);
  float* gs = b + E;
  int* picks = reinterpret_cast<int*>(gs + G);
  const float* s = scores + idx(t) * E;

  for (int e = lane; e < E; e += 32) b[e] = __fadd_rn(s[e], bias[e]);
  __syncwarp();

  // Group limit: the topk_group-th best group; a group is kept when it ranks at or before it.
  const bool limit = a.topk_group < G;
  Cand cut{-INFINITY, kNone};
  if (limit) {
    for (int g = lane; g < G; g += 32) {
      const float* bg = b + idx(g) * per;
      float score;
      if (per == 1) {
        score = bg[0];
      } else {  // exec/ops's two-largest scan, then m1 + m2
        float m1 = bg[0], m2 = bg[1];
        if (m2 > m1) {
          const float tmp = m1;
          m1 = m2;
          m2 = tmp;
        }
        for (int q = 2; q < per; ++q) {
          const float x = bg[q];
          if (x > m1) {
            m2 = m1;
            m1 = x;
          } else if (x > m2) {
            m2 = x;
          }
        }
        score = __fadd_rn(m1, m2);
      }
      gs[g] = score;
    }
    __syncwarp();
    for (int r = 0; r < a.topk_group; ++r) {
      Cand best{-INFINITY, kNone};
      for (int g = lane; g < G; g += 32) {
        const float v = gs[g];
        if ((r == 0 || beats(cut.v, cut.i, v, g)) && beats(v, g, best.v, best.i)) best = Cand{v, g};
      }
      cut = warp_best(best);
    }
  }

  Cand prev{-INFINITY, kNone};
  for (int j = 0; j < K; ++j) {
    Cand best{-INFINITY, kNone};
    for (int e = lane; e < E; e += 32) {
      if (limit) {
        const int g = e / per;
        if (!(g == cut.i || beats(gs[g], g, cut.v, cut.i))) continue;
      }
      const float v = b[e];
      if ((j == 0 || beats(prev.v, prev.i, v, e)) && beats(v, e, best.v, best.i)) best = Cand{v, e};
    }
    prev = warp_best(best);
    if (lane == 0) picks[j] = prev.i == kNone ? -1 : prev.i;
  }
  __syncwarp();

  // gate_weights: Σ over the slots in order (every lane the same sum), then s / Σ · rsf.
  const float nan = __int_as_float(0x7FC00000);
  float sum = 0.0f;
  if (a.norm)
    for (int j = 0; j < K; ++j) {
      const int e = picks[j];
      sum = __fadd_rn(sum, e >= 0 ? s[e] : nan);
    }
  for (int j = lane; j < K; j += 32) {
    const int e = picks[j];
    float g = nan;
    if (e >= 0) g = a.norm ? __fmul_rn(__fdiv_rn(s[e], sum), a.rsf) : __fmul_rn(s[e], a.rsf);
    const std::size_t o = idx(t) * K + j;
    expert[o] = e;
    gate[o] = g;
  }
}

// Shared memory per warp: slot_of[E] (the slot that chose expert e, or −1).
// No __restrict__ on d_scores / d_logits: they may alias (element e is read, then written, by
// the same lane).
__global__ void router_backward_kernel(const float* __restrict__ scores, const int32_t* __restrict__ expert,
                                       const float* __restrict__ d_gate, const float* d_scores, int tokens,
                                       SelectArgs a, float* d_logits) {
  extern __shared__ int slot_mem[];
  const int warps = static_cast<int>(blockDim.x) / 32, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int t = blockIdx.x * warps + warp;
  if (t >= tokens) return;
  const int E = a.E, K = a.K;
  int* slot_of = slot_mem + idx(warp) * E;
  const std::size_t row = idx(t) * E;
  const float* s = scores + row;
  const int32_t* ids = expert + idx(t) * K;
  const float* dg = d_gate + idx(t) * K;

  for (int e = lane; e < E; e += 32) slot_of[e] = -1;
  __syncwarp();
  for (int j = lane; j < K; j += 32) {
    const int e = ids[j];
    if (e >= 0 && e < E) atomicMax(&slot_of[e], j);  // a repeated expert (not from router_select): the last slot
  }
  __syncwarp();

  // Σ s and Σ dg·s over the slots in order (two accumulators, each in the CPU's order).
  float sum = 0.0f, dot = 0.0f;
  if (a.norm) {
    const float nan = __int_as_float(0x7FC00000);
    for (int j = 0; j < K; ++j) {
      const int e = ids[j];
      const float sv = e >= 0 && e < E ? s[e] : nan;
      sum = __fadd_rn(sum, sv);
      dot = __fadd_rn(dot, __fmul_rn(dg[j], sv));
    }
  }
  for (int e = lane; e < E; e += 32) {
    float ds = d_scores ? d_scores[row + e] : 0.0f;
    const int j = slot_of[e];
    if (j >= 0) {
      const float c = a.norm ? __fdiv_rn(__fmul_rn(a.rsf, __fsub_rn(dg[j], __fdiv_rn(dot, sum))), sum)
                             : __fmul_rn(a.rsf, dg[j]);
      ds = __fadd_rn(ds, c);
    }
    const float sv = s[e];
    d_logits[row + e] = __fmul_rn(ds, __fmul_rn(sv, __fsub_rn(1.0f, sv)));
  }
}

__global__ void expert_counts_kernel(const int32_t* __restrict__ expert, std::size_t n, int E,
                                     unsigned long long* __restrict__ counts) {
  for (std::size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x) {
    const int e = expert[i];
    if (e >= 0 && e < E) atomicAdd(&counts[e], 1ull);
  }
}

SelectArgs args_of(const RouterConfig& p) {
  // The CPU's `static_cast<T>(cfg.routed_scaling_factor)`.
  return SelectArgs{p.n_routed, p.n_group, p.topk_group, p.top_k, static_cast<float>(p.routed_scaling_factor),
                    p.norm_topk_prob};
}

// Warps per block so that the per-warp shared slices fit the budget (at most kMaxWarps).
int warps_for(std::size_t bytes_per_warp) {
  const std::size_t w = kSharedBudget / bytes_per_warp;
  return static_cast<int>(w < 1 ? 1 : (w > kMaxWarps ? kMaxWarps : w));
}

unsigned blocks_for(int tokens, int warps) {
  return static_cast<unsigned>((idx(tokens) + warps - 1) / warps);
}

void require_tokens(int tokens, const char* who) {
  if (tokens < 0) throw std::invalid_argument(std::string(who) + ": tokens must be >= 0");
}

}  // namespace

void check_device_router(const RouterConfig& p) {
  p.validate();
  if (p.n_routed > kRouterMaxExperts)
    throw std::invalid_argument("RouterConfig: n_routed " + std::to_string(p.n_routed) + " > " +
                                std::to_string(kRouterMaxExperts) + " (the device router's limit)");
}

void router_sigmoid(const float* logits, std::size_t n, float* scores, cudaStream_t stream) {
  if (n == 0) return;
  router_sigmoid_kernel<<<grid_for(n, 256), 256, 0, stream>>>(logits, n, scores);
  check_launch("router_sigmoid");
}

void router_select(const float* scores, const float* bias, int tokens, const RouterConfig& p, int32_t* expert,
                   float* gate, cudaStream_t stream) {
  check_device_router(p);
  require_tokens(tokens, "router_select");
  if (tokens == 0) return;
  const std::size_t per_warp = sizeof(float) * idx(p.n_routed + p.n_group + p.top_k);
  const int warps = warps_for(per_warp);
  const unsigned blocks = blocks_for(tokens, warps);
  router_select_kernel<<<blocks, warps * 32, per_warp * warps, stream>>>(scores, bias, tokens, args_of(p), expert,
                                                                        gate);
  check_launch("router_select");
}

void router_forward(const float* logits, const float* bias, int tokens, const RouterConfig& p, float* scores,
                    int32_t* expert, float* gate, cudaStream_t stream) {
  check_device_router(p);
  require_tokens(tokens, "router_forward");
  router_sigmoid(logits, idx(tokens) * p.n_routed, scores, stream);
  router_select(scores, bias, tokens, p, expert, gate, stream);
}

void router_forward(Blas& blas, const float* x, const float* Wg, int tokens, int hidden, const float* bias,
                    const RouterConfig& p, float* scores, int32_t* expert, float* gate) {
  check_device_router(p);
  require_tokens(tokens, "router_forward");
  if (hidden < 0) throw std::invalid_argument("router_forward: hidden must be >= 0");
  if (tokens == 0) return;
  if (hidden == 0)  // an empty inner dimension: logits 0 (cuBLAS rejects lda = 0)
    check(cudaMemsetAsync(scores, 0, sizeof(float) * idx(tokens) * p.n_routed, blas.stream()),
          "router_forward: zero logits");
  else
    blas.gemm(false, true, tokens, p.n_routed, hidden, 1.0f, x, hidden, Wg, hidden, 0.0f, scores, p.n_routed);
  router_forward(scores, bias, tokens, p, scores, expert, gate, blas.stream());
}

void router_backward_logits(const float* scores, const int32_t* expert, const float* d_gate, const float* d_scores,
                            int tokens, const RouterConfig& p, float* d_logits, cudaStream_t stream) {
  check_device_router(p);
  require_tokens(tokens, "router_backward_logits");
  if (tokens == 0) return;
  const std::size_t per_warp = sizeof(int) * idx(p.n_routed);
  const int warps = warps_for(per_warp);
  const unsigned blocks = blocks_for(tokens, warps);
  router_backward_kernel<<<blocks, warps * 32, per_warp * warps, stream>>>(scores, expert, d_gate, d_scores, tokens,
                                                                          args_of(p), d_logits);
  check_launch("router_backward_logits");
}

void add_expert_counts(const int32_t* expert, std::size_t n, int n_routed, int64_t* counts, cudaStream_t stream) {
  if (n_routed <= 0) throw std::invalid_argument("add_expert_counts: n_routed must be positive");
  if (n == 0) return;
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "64-bit counters");
  // Two's-complement addition: adding 1 to the unsigned view is adding 1 to the int64.
  expert_counts_kernel<<<grid_for(n, 256), 256, 0, stream>>>(expert, n, n_routed,
                                                             reinterpret_cast<unsigned long long*>(counts));
  check_launch("add_expert_counts");
}

}  // namespace tandem::cuda
