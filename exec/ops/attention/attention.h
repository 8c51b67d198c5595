// Multi-head latent attention (MLA), as Hugging Face modeling_deepseek (DeepseekV3Attention):
//
//   q   = q_b_proj(q_a_layernorm(q_a_proj(x)))        [M, heads·(qk_nope+qk_rope)]
//         (q_lora_rank == 0: q = q_proj(x))
//   kv_a = kv_a_proj_with_mqa(x) = [c_kv | k_pe]       [M, kv_lora_rank + qk_rope]
//   kv  = kv_b_proj(kv_a_layernorm(c_kv))              [M, heads·(qk_nope+v_head)], per head [k_nope | v]
//   q_pe, k_pe ← RoPE (k_pe is one key shared by all heads)
//   scores_h = (q_nope_h·k_nope_hᵀ + q_pe_h·k_peᵀ) · softmax_scale, causal within each sequence
//   attn_h = softmax(scores_h) · v_h;  out = o_proj([attn_0 | … | attn_{heads-1}])
//
// Layouts: rows are tokens, sequence-major (a micro-batch of `sequences × seq_len` rows; row r is
// position r % seq_len of sequence r / seq_len). Per head h, q's columns [h·qk, (h+1)·qk) hold
// [q_nope | q_pe] (qk = qk_nope + qk_rope); kv's columns [h·(nope+v), (h+1)·(nope+v)) hold [k_nope | v];
// attn's columns [h·v_head, (h+1)·v_head).
//
// RoPE: HF DeepSeek-V3's variant. The rope part arrives INTERLEAVED (pairs (2i, 2i+1) rotate by
// pos·θ_i, θ_i = rope_theta^(−2i/d)); HF de-interleaves it to [evens | odds] and applies rotate-half,
// so the output is in rotate-half layout: out[i] = a·cos − b·sin, out[i+d/2] = b·cos + a·sin with
// (a, b) = (in[2i], in[2i+1]). cos/sin are computed in double and rounded to T. rope_theta = 10000
// (the model card has no rope_theta; HF's default). No YaRN: ModelCard has no rope_scaling, so
// softmax_scale = 1/sqrt(qk_nope + qk_rope) with no mscale correction.
//
// Numerics: the seven projections follow `Numerics` (linear.h); the norms, RoPE and the attention
// core (scores, softmax, P·V) run in T (DeepSeek-V3 keeps attention operators out of FP8). The core
// is a plain fixed-order loop, one sequence and head at a time: a row's output depends only on the
// rows at or before it in its own sequence (never on other sequences, M, or later rows).
//
// Saved activations: x, the two down-projection outputs (q_a, kv_a), the attention output (o_proj's
// input) and the softmax log-sum-exp. With MlaConfig::recompute (default, as DeepSeek-V3 does) the
// RMSNorms, the up-projections (q_b_proj, kv_b_proj) and RoPE are recomputed in backward-input;
// with recompute = false their outputs are kept in MlaSaved instead (more memory, fewer FLOPs;
// bit-identical gradients either way).
#pragma once

#include <cstdint>
#include <type_traits>

#include "exec/ops/tensor.h"
#include "exec/spec/mla_config.h"
#include "models/model_card.h"

namespace tandem::nn {

using spec::MlaConfig;  // exec/spec/mla_config.h: one definition for every backend

// The MLA shape of a model card (rope_theta 10000, recompute on).
MlaConfig mla_config(const ModelCard& card);

template <class T>
struct MlaWeights {
  Mat<T> q_a_proj;            // [q_lora_rank, hidden]                     (q_lora_rank > 0)
  Vec<T> q_a_layernorm;       // [q_lora_rank]                             (q_lora_rank > 0)
  Mat<T> q_b_proj;            // [heads·qk_head, q_lora_rank]              (q_lora_rank > 0)
  Mat<T> q_proj;              // [heads·qk_head, hidden]                   (q_lora_rank == 0)
  Mat<T> kv_a_proj_with_mqa;  // [kv_lora_rank + qk_rope, hidden]
  Vec<T> kv_a_layernorm;      // [kv_lora_rank]
  Mat<T> kv_b_proj;           // [heads·(qk_nope + v_head), kv_lora_rank]
  Mat<T> o_proj;              // [hidden, heads·v_head]
};

// Weights of the right shapes, all zero (norm weights too): a gradient accumulator.
template <class T>
MlaWeights<T> mla_zero_weights(const MlaConfig& c);

template <class T>
struct MlaSaved {
  int64_t seq_len = 0;
  bool kept = false;  // the forward ran with recompute == false: the fields below the line are set
  Mat<T> x;     // [M, hidden]                 the input
  Mat<T> q_a;   // [M, q_lora_rank]            q_a_proj(x), before q_a_layernorm (empty without q_lora)
  Mat<T> kv_a;  // [M, kv_lora_rank + qk_rope] kv_a_proj_with_mqa(x): c_kv | k_pe (before norm, RoPE)
  Mat<T> attn;  // [M, heads·v_head]           softmax(scores)·v, o_proj's input
  Mat<T> lse;   // [M, heads]                  log Σ_j exp(score_j) of each row and head
  // Kept only when recompute == false (else empty):
  Mat<T> q_a_normed;   // [M, q_lora_rank]
  Mat<T> kv_a_normed;  // [M, kv_lora_rank]
  Mat<T> q;            // [M, heads·qk_head]  after RoPE
  Mat<T> kv;           // [M, heads·(qk_nope + v_head)]
  Mat<T> k_pe;         // [M, qk_rope]        after RoPE
};

// What backward-input hands to the weight pass (besides MlaSaved and dy).
template <class T>
struct MlaInputGrad {
  Mat<T> dx;             // [M, hidden]
  Mat<T> d_q;            // [M, heads·qk_head]   at the output of q_b_proj / q_proj (before RoPE)
  Mat<T> q_a_normed;     // [M, q_lora_rank]     q_b_proj's input (recomputed or copied)
  Mat<T> d_q_a_normed;   // [M, q_lora_rank]     at q_a_layernorm's output
  Mat<T> d_q_a;          // [M, q_lora_rank]     at q_a_proj's output
  Mat<T> d_kv_a;         // [M, kv_lora + qk_rope] at kv_a_proj_with_mqa's output
  Mat<T> kv_a_normed;    // [M, kv_lora_rank]    kv_b_proj's input
  Mat<T> d_kv_a_normed;  // [M, kv_lora_rank]    at kv_a_layernorm's output
  Mat<T> d_kv;           // [M, heads·(qk_nope + v_head)] at kv_b_proj's output
};

// out[M, hidden] = MLA(x); M must be a multiple of seq_len. Fills *saved when non-null.
template <class T>
Mat<T> mla_forward(const MlaConfig& c, const MlaWeights<T>& w, const Mat<T>& x, int64_t seq_len,
                   Numerics n, std::type_identity_t<MlaSaved<T>>* saved);
template <class T>
MlaInputGrad<T> mla_backward_input(const MlaConfig& c, const MlaWeights<T>& w,
                                   const MlaSaved<T>& saved, const Mat<T>& dy, Numerics n);
// grads.* += (every weight and both norm weights); the caller zeroes grads (mla_zero_weights).
template <class T>
void mla_backward_weight(const MlaConfig& c, const MlaSaved<T>& saved, const MlaInputGrad<T>& g,
                         const Mat<T>& dy, Numerics n, MlaWeights<T>& grads);

// ---- The pieces, exposed for kernels to be checked against ----

// RoPE in place on `width` columns starting at column `col` of every row, and on the `count - 1`
// further groups `stride` columns apart (e.g. every head's q_pe); position of row r = r % seq_len.
// inverse = true applies the transpose (the backward of the rotation).
template <class T>
void rope_apply(Mat<T>& m, int64_t col, int64_t width, int64_t count, int64_t stride,
                int64_t seq_len, double theta, bool inverse);

// The causal attention core. q [M, heads·dqk] per head [nope | rope]; kv [M, heads·(nope + dv)]
// per head [k_nope | v]; k_pe [M, rope] shared. attn [M, heads·dv], lse [M, heads].
template <class T>
void attention_core_forward(const Mat<T>& q, const Mat<T>& kv, const Mat<T>& k_pe, int64_t heads,
                            int64_t nope, int64_t rope, int64_t dv, int64_t seq_len, double scale,
                            Mat<T>& attn, Mat<T>& lse);
// Gradients at q, kv and k_pe (overwritten) from d_attn and the forward's attn and lse.
template <class T>
void attention_core_backward(const Mat<T>& q, const Mat<T>& kv, const Mat<T>& k_pe,
                             const Mat<T>& attn, const Mat<T>& lse, const Mat<T>& d_attn,
                             int64_t heads, int64_t nope, int64_t rope, int64_t dv,
                             int64_t seq_len, double scale, Mat<T>& dq, Mat<T>& dkv,
                             Mat<T>& dk_pe);

}  // namespace tandem::nn
