// Multi-head latent attention (MLA) on the device: the CUDA twin of exec/ops/attention/attention.h
// (Hugging Face DeepseekV3Attention), FP32 activations, same layouts, same saved state.
//
//   q    = q_b_proj(q_a_layernorm(q_a_proj(x)))      (q_lora_rank == 0: q = q_proj(x))
//   kv_a = kv_a_proj_with_mqa(x) = [c_kv | k_pe]
//   kv   = kv_b_proj(kv_a_layernorm(c_kv))           per head [k_nope | v]
//   q_pe, k_pe ← RoPE (HF's interleaved → rotate-half variant; k_pe shared by all heads)
//   attn_h = causal softmax((q_nope_h·k_nope_hᵀ + q_pe_h·k_peᵀ) · scale) · v_h;  out = o_proj(attn)
//
// Layouts (all device FP32, row-major, contiguous): rows are tokens, sequence-major (row r is
// position r % seq_len of sequence r / seq_len); q [M, heads·(qk_nope+qk_rope)] per head
// [q_nope | q_pe]; kv [M, heads·(qk_nope+v_head)] per head [k_nope | v]; attn [M, heads·v_head];
// lse [M, heads]. Weights in PyTorch layout [out, in], the shapes of nn::MlaWeights.
//
// Numerics: as exec/ops's mla_* with the run's Numerics (the DeviceLinear's Numerics):
//   * the seven projections (q_a, q_b | q, kv_a_proj_with_mqa, kv_b, o) run through DeviceLinear
//     in its numerics, all seven of them (exec/ops keeps none out of BF16 / FP8): exact = cuBLAS
//     FP32 (pedantic, no TF32; cuBLAS sums in its own order), bf16 / fp8 = exec/ops/linear/linear_cuda.h
//     (forward and input-gradient outputs rounded to BF16 where the CPU rounds them, weight
//     gradients added to the FP32 accumulators unrounded). The input gradient at x is summed as
//     the CPU does: dx = dgrad(q_a | q) first, then dx += dgrad(kv_a) (each rounded, added in FP32).
//   * RMSNorm: rmsnorm_cuda.h (tree-reduced sum of squares), FP32 in every numerics. The norm weight
//     gradient is accumulated here (rmsnorm_weight_accumulate): dw[j] is read, then Σ_i dy·(x·r_i)
//     is added to it one row at a time in increasing i, the CPU's order, with r_i the forward's
//     (saved) inverse RMS.
//   * RoPE: cos/sin computed on the host exactly as exec/ops does (double, rounded to float) and
//     uploaded once per seq_len; the rotation is written with __fmul_rn/__fadd_rn/__fsub_rn, so
//     the kernel is bit-identical to nn::rope_apply on the same input.
//   * attention core (FP32 in every numerics, as exec/ops: DeepSeek-V3 keeps it out of FP8): scores
//     and P·V by batched cuBLAS FP32 GEMMs on the Blas, softmax / softmax-backward kernels using
//     expf/logf (not glibc's), so the core is tolerance-equal to the CPU's loop.
// Compare with exec/ops by a tolerance, not bitwise (exec/ops/attention/attention_gpu_test.cpp: exact 1e-4,
// bf16 2e-3, fp8 1e-2 rel-L2).
// Deterministic: no atomics; every reduction has a fixed order (warp butterflies, sequential loops,
// cuBLAS without atomics on one stream); the sum of dk_pe over heads runs in increasing head order.
// Two runs with the same inputs, shapes and core budget are bit-identical.
//
// Stream: everything runs on the Blas's stream (blas.stream()), asynchronously; the caller
// synchronises before reading results on the host. Buffers of MlaDeviceSaved / MlaDeviceInputGrad
// are (re)allocated to their exact sizes by the call that fills them. Growing the scratch, resizing
// such a buffer or a new seq_len (new RoPE table) first synchronises the stream once, since queued
// work may still read the old memory; in steady state (same shapes) no call synchronises.
//
// Projections: every GEMM with a weight goes through MlaDevice::project (y = x·Wᵀ),
// project_dgrad (dx = dy·W, optionally added) and project_wgrad (dW += dyᵀ·x), each told which
// weight it is (MlaProj), and they call the DeviceLinear; nothing else issues a weight GEMM.
//
// FP8 weights: DeviceLinear quantises W (128x128 blocks, plus its transpose for the input
// gradient) on every call unless it is given a quantised copy. A layer's weights are used by
// every micro-batch of a step, so prepare_weights(w) quantises the six projection matrices of w
// once into per-MlaProj Fp8Weights held by this object. THE CALLER CALLS IT AFTER EACH OPTIMIZER
// STEP (and before the step's first forward): the cache is not refreshed by itself, and a cached
// copy is used whenever a call's weight pointer is the one it was prepared from, so a stale cache
// would silently run the previous step's weights. Calls with other weight pointers (e.g. another
// layer sharing this MlaDevice) quantise per call, correctly. Results with prepared weights are
// bit-identical to per-call quantisation (same kernels on the same input). exact / bf16 have
// nothing to prepare (prepare_weights only clears the cache).
//
// Workspace: the attention core works on `chunk` (sequence, head) pairs at a time, gathered to a
// [chunk, seq_len, ·] layout so one strided-batched GEMM covers them. Per pair it needs, in floats,
//   forward:  S·(2·qk_head + 2·v_head + S)      backward:  S·(4·qk_head + 3·v_head + 2·S)
// (S = seq_len; the S² terms are the FP32 score / probability matrices), plus M·heads floats (the
// row sums D) in backward. chunk = clamp(core_budget_bytes / (4 · per-pair need), 1, sequences·heads),
// so the core workspace stays within the budget (default 2 GiB; plus up to 128 bytes of padding per
// sub-buffer) unless one pair alone exceeds it (S = 4096, qk_head 192, v_head 128: 146 MiB per pair
// in backward, chunk 14). The projections' scratch is O(M·width) (q, kv, k_pe, c_kv, d_attn when
// they are not kept in MlaDeviceSaved).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/spec/mla_config.h"

namespace tandem::cuda {

// exec/spec/mla_config.h: the CPU reference's type. MlaDevice checks that every size fits an
// int (the kernels index in int) and rounds softmax_scale() to float once, as the CPU's
// static_cast<T> does.
using spec::MlaConfig;

// The eight tensors of nn::MlaWeights as device pointers (nullptr where the config has none:
// q_a_* / q_b_proj without q_lora_rank, q_proj with it).
template <class P>
struct MlaTensors {
  P q_a_proj = nullptr;            // [q_lora_rank, hidden]
  P q_a_layernorm = nullptr;       // [q_lora_rank]
  P q_b_proj = nullptr;            // [heads·qk_head, q_lora_rank]
  P q_proj = nullptr;              // [heads·qk_head, hidden]
  P kv_a_proj_with_mqa = nullptr;  // [kv_lora_rank + qk_rope, hidden]
  P kv_a_layernorm = nullptr;      // [kv_lora_rank]
  P kv_b_proj = nullptr;           // [heads·(qk_nope + v_head), kv_lora_rank]
  P o_proj = nullptr;              // [hidden, heads·v_head]
};
using MlaDeviceWeights = MlaTensors<const float*>;
using MlaDeviceGrads = MlaTensors<float*>;  // accumulators: backward_weight adds into them

// nn::MlaSaved on the device (same fields, same shapes), plus the two norms' inverse RMS per row
// from the forward (the weight pass uses them instead of recomputing the sums of squares).
struct MlaDeviceSaved {
  int rows = 0;
  int seq_len = 0;
  bool kept = false;            // forward ran with recompute == false: the kept buffers are set
  DeviceBuffer<float> x;        // [M, hidden]
  DeviceBuffer<float> q_a;      // [M, q_lora_rank]   (empty without q_lora)
  DeviceBuffer<float> kv_a;     // [M, kv_lora_rank + qk_rope]
  DeviceBuffer<float> attn;     // [M, heads·v_head]
  DeviceBuffer<float> lse;      // [M, heads]
  DeviceBuffer<float> q_a_inv_rms;   // [M]  (empty without q_lora)
  DeviceBuffer<float> kv_a_inv_rms;  // [M]
  // Kept only when recompute == false (else empty):
  DeviceBuffer<float> q_a_normed;   // [M, q_lora_rank]
  DeviceBuffer<float> kv_a_normed;  // [M, kv_lora_rank]
  DeviceBuffer<float> q;            // [M, heads·qk_head]  after RoPE
  DeviceBuffer<float> kv;           // [M, heads·(qk_nope + v_head)]
  DeviceBuffer<float> k_pe;         // [M, qk_rope]        after RoPE
};

// nn::MlaInputGrad on the device (same fields, same shapes; q_lora ones empty without q_lora).
struct MlaDeviceInputGrad {
  DeviceBuffer<float> dx;             // [M, hidden]
  DeviceBuffer<float> d_q;            // [M, heads·qk_head]  before RoPE
  DeviceBuffer<float> q_a_normed;     // [M, q_lora_rank]
  DeviceBuffer<float> d_q_a_normed;   // [M, q_lora_rank]
  DeviceBuffer<float> d_q_a;          // [M, q_lora_rank]
  DeviceBuffer<float> d_kv_a;         // [M, kv_lora_rank + qk_rope]
  DeviceBuffer<float> kv_a_normed;    // [M, kv_lora_rank]
  DeviceBuffer<float> d_kv_a_normed;  // [M, kv_lora_rank]
  DeviceBuffer<float> d_kv;           // [M, heads·(qk_nope + v_head)]
};

// Which weight a projection multiplies (indexes the prepared FP8 weights).
enum class MlaProj { q_a, q_b, q, kv_a, kv_b, o };
inline constexpr int kMlaProjCount = 6;

// ---- The pieces (launchers on device pointers, asynchronous on `stream`) ----

// The RoPE table of nn::rope_apply: [2, seq_len, width/2], cos then sin, table[p·(w/2) + i] =
// float(cos(p · inv_freq_i)), inv_freq_i = 1 / theta^(2i/width), computed in double.
std::vector<float> rope_cos_sin(int seq_len, int width, double theta);

// nn::rope_apply on `count` groups of `width` columns, groups `stride` apart (stride >= width),
// in every row: in points at the first group's first column of row 0 (row stride ld_in), out
// likewise (ld_out). in == out (in place) is allowed. Position of row r = r % seq_len; `table` is
// rope_cos_sin(seq_len, width, theta) on the device. inverse: the transpose (rotate-half in,
// interleaved out). width even, <= 4096. Bit-identical to the CPU.
void rope_apply(const float* in, int ld_in, float* out, int ld_out, int rows, int width, int count, int stride,
                int seq_len, const float* table, bool inverse, cudaStream_t stream);

// dw[j] = (…((dw[j] + t_0j) + t_1j) + …) + t_(rows-1)j,  t_ij = dy[i,j] · (x[i,j] · inv_rms[i]):
// nn::rmsnorm_backward_weight's accumulation, given the inverse RMS of each row. x and dy have
// row strides ld_x, ld_dy (x may be a column slice, e.g. c_kv inside kv_a).
void rmsnorm_weight_accumulate(const float* x, int ld_x, const float* dy, int ld_dy, const float* inv_rms, int rows,
                               int cols, float* dw, cudaStream_t stream);

// The attention core's shape (nn::attention_core_forward's arguments).
struct AttentionShape {
  int rows = 0;  // M, a multiple of seq_len
  int heads = 0;
  int nope = 0;
  int rope = 0;
  int dv = 0;
  int seq_len = 0;
  float scale = 0.0f;
  int qk() const { return nope + rope; }
  int sequences() const { return seq_len > 0 ? rows / seq_len : 0; }
};

// (sequence, head) pairs per batched GEMM for a budget (see Workspace above), and the workspace
// size in floats that attention_core_forward / _backward need at that chunk.
int attention_core_chunk(const AttentionShape& s, std::size_t budget_bytes, bool backward);
std::size_t attention_core_workspace(const AttentionShape& s, int chunk, bool backward);

// nn::attention_core_forward: q, kv, k_pe → attn [M, heads·dv], lse [M, heads] (both overwritten).
// Runs on blas.stream(); `workspace` holds attention_core_workspace(s, chunk, false) floats.
void attention_core_forward(Blas& blas, const AttentionShape& s, int chunk, const float* q, const float* kv,
                            const float* k_pe, float* workspace, float* attn, float* lse);
// nn::attention_core_backward: dq [M, heads·qk], dkv [M, heads·(nope+dv)], dk_pe [M, rope]
// (overwritten; dk_pe = Σ over heads in increasing order). workspace: attention_core_workspace(s,
// chunk, true) floats.
void attention_core_backward(Blas& blas, const AttentionShape& s, int chunk, const float* q, const float* kv,
                             const float* k_pe, const float* attn, const float* lse, const float* d_attn,
                             float* workspace, float* dq, float* dkv, float* dk_pe);

// ---- The layer ----

// One MLA layer's passes on one stream (the Blas's, which must be the DeviceLinear's). Holds the
// config, the cached RoPE table, the prepared FP8 weights and the scratch / core workspace (grown on
// demand, kept between calls). Not thread-safe.
class MlaDevice {
 public:
  static constexpr std::size_t kDefaultCoreBudget = std::size_t{2} << 30;

  // blas (the attention core's batched GEMMs) and linear (the projections, in its numerics) must
  // outlive this object and share one stream. Throws std::invalid_argument on a bad config (as
  // nn's check_config) or when linear.stream() != blas.stream().
  MlaDevice(const MlaConfig& c, Blas& blas, DeviceLinear& linear,
            std::size_t core_budget_bytes = kDefaultCoreBudget);
  MlaDevice(const MlaDevice&) = delete;
  MlaDevice& operator=(const MlaDevice&) = delete;

  const MlaConfig& config() const { return c_; }
  cudaStream_t stream() const { return blas_.stream(); }
  Numerics numerics() const { return lin_.numerics(); }
  // The attention core's chunk for `rows` tokens of `seq_len` (see Workspace above).
  int core_chunk(int rows, int seq_len, bool backward) const;

  // fp8: quantise the projection weights of w (q_a_proj, q_b_proj | q_proj, kv_a_proj_with_mqa,
  // kv_b_proj, o_proj) into this object's cache, asynchronously on stream(); later calls whose
  // weight pointer equals the prepared one use the cached copy. Call it after every optimizer
  // step (see FP8 weights above). exact / bf16: only clears the cache.
  void prepare_weights(const MlaDeviceWeights& w);
  // Forget the prepared weights (every call quantises per call again); frees nothing.
  void clear_prepared_weights();
  // The cached quantisation of `which` (nullptr when none is prepared), for checks.
  const Fp8Weight* prepared_weight(MlaProj which) const;

  // nn::mla_forward: out [rows, hidden] (device, overwritten) = MLA(x [rows, hidden]); rows a
  // multiple of seq_len. Fills *saved when non-null (x copied into it).
  void forward(const MlaDeviceWeights& w, const float* x, int rows, int seq_len, float* out, MlaDeviceSaved* saved);
  // nn::mla_backward_input: g (resized, overwritten) from the forward's saved state and dy [M, hidden].
  void backward_input(const MlaDeviceWeights& w, const MlaDeviceSaved& s, const float* dy, MlaDeviceInputGrad& g);
  // nn::mla_backward_weight: grads.* += every weight's and both norm weights' gradient, in the
  // CPU's order of calls (o_proj, q_b_proj, q_a_layernorm, q_a_proj | q_proj, kv_b_proj,
  // kv_a_layernorm, kv_a_proj_with_mqa). The caller zeroes grads once.
  void backward_weight(const MlaDeviceSaved& s, const MlaDeviceInputGrad& g, const float* dy,
                       const MlaDeviceGrads& grads);

 private:
  // Outputs of the norms, up-projections and RoPE (nn's Projected).
  struct Projected {
    float* q_a_normed = nullptr;
    float* q_inv_rms = nullptr;  // nullable
    float* c_kv = nullptr;       // [M, kv_lora_rank], contiguous copy of kv_a's left columns
    float* kv_a_normed = nullptr;
    float* kv_inv_rms = nullptr;  // nullable
    float* q = nullptr;
    float* kv = nullptr;
    float* k_pe = nullptr;
  };

  // One prepared (cached) FP8 weight: valid for calls with W == src.
  struct Prepared {
    const float* src = nullptr;
    Fp8Weight q;
  };
  // W [n, k] as a DeviceLinear argument, with its prepared quantisation when there is one for W.
  LinearWeight weight(MlaProj which, const float* W, int n, int k) const;

  // The only weight GEMMs (see Projections above); all operands contiguous row-major.
  // y[M,N] = x[M,K] · W[N,K]ᵀ
  void project(MlaProj which, const float* x, const float* W, int m, int n, int k, float* y);
  // dx[M,K] = dy[M,N] · W[N,K]  (+ dx when accumulate)
  void project_dgrad(MlaProj which, const float* dy, const float* W, int m, int n, int k, float* dx, bool accumulate);
  // dW[N,K] += dy[M,N]ᵀ · x[M,K]
  void project_wgrad(MlaProj which, const float* dy, const float* x, int m, int n, int k, float* dW);

  void project_up(const MlaDeviceWeights& w, const float* x, const float* q_a, const float* kv_a, int rows,
                  int seq_len, const Projected& p);
  const float* rope_table(int seq_len);
  float* resize(DeviceBuffer<float>& b, std::size_t count);
  AttentionShape core_shape(int rows, int seq_len) const;

  MlaConfig c_;
  Blas& blas_;
  DeviceLinear& lin_;
  std::size_t core_budget_;
  Prepared prepared_[kMlaProjCount];
  int rope_seq_len_ = 0;
  std::vector<float> rope_host_;
  DeviceBuffer<float> rope_dev_;
  DeviceBuffer<float> core_ws_;
  MlaDeviceSaved scratch_saved_;  // forward without a caller's saved
  DeviceBuffer<float> s_q_a_normed_, s_kv_a_normed_, s_q_, s_kv_, s_k_pe_, s_c_kv_;
  DeviceBuffer<float> s_d_attn_, s_dk_pe_, s_d_c_kv_;
};

}  // namespace tandem::cuda
