#include "models/workload.h"

#include <cmath>
#include <numeric>

#include "models/routing_fanout.h"

namespace tandem {

namespace {

double ceil_div(double a, double b) { return std::ceil(a / b); }

// Everything the op builders need about one micro-batch.
struct Ctx {
  const ModelCard& m;
  const PrecisionRecipe& p;
  const RecomputePolicy& rc;
  double T;    // tokens in the micro-batch
  double S;    // sequence length
  double seqs; // sequences in the micro-batch

  double tile() const { return static_cast<double>(p.act_tile); }
  // Bytes of a rows x cols FP8 tensor with its 1 x tile FP32 scales.
  double fp8_tensor(double rows, double cols) const {
    return rows * cols + rows * ceil_div(cols, tile()) * 4.0;
  }
  double scales(double rows, double cols) const { return rows * ceil_div(cols, tile()) * 4.0; }
  // Bytes of a rows x cols activation as kept by the FP8 cache (with its 1 x tile scales).
  double cached(double rows, double cols) const {
    return (p.fp8 && rc.fp8_activation_cache) ? fp8_tensor(rows, cols) : rows * cols * 2.0;
  }
  double hidden() const { return static_cast<double>(m.hidden_size); }
  // The dispatch (and combine's backward) wire is FP8: tokens cast once on the token side.
  bool fp8_dispatch() const { return p.fp8 && p.fp8_dispatch; }
};

// How a linear's input reaches it.
enum class Input {
  bf16,         // BF16 tensor kept from forward (FP8 recipe: quantised, then cached)
  recomputed,   // output of a recomputed op (RMSNorm, SwiGLU): nothing kept, rebuilt in backward
  fp8_arrives,  // already FP8 with scales (dispatched tokens, fused SwiGLU output)
};

struct LinearSpec {
  std::string name;
  Part part;
  double rows;      // M: rows per GEMM call summed over `count` (per GPU)
  int64_t in, out;  // K, N
  int64_t count = 1;           // identical GEMMs (local experts)
  int64_t params = 0;          // parameters owned (whole model)
  bool routed = false;
  bool fp8 = true;             // recipe allows FP8 for this linear
  Input input = Input::bf16;
  bool recompute_output = false;  // forward redone in backward (MLA up-projections)
  OpKind kind = OpKind::linear;
  Dtype out_dtype = Dtype::bf16;
  // BF16 linears whose weight gradient is computed with the input gradient, not deferred to a
  // W pass (DeepSeek's router gate: only its FP8 linears split their backward).
  bool wgrad_with_dgrad = false;
  // The output gradient arrives already in FP8 (an MoE layer's output gradient, cast once for
  // combine's backward): its dgrad needs no cast.
  bool grad_arrives_fp8 = false;
};

// A linear's three GEMMs and the kernels DeepSeek's FP8 linear launches around them (read off
// its profiler trace): every FP8 GEMM is preceded by a small layout kernel for its scales; a BF16
// input is quantised per token (each linear casts its own copy, even of a shared input); the
// weight is transposed in FP8 for the pass whose layout differs from the stored one (dgrad for
// dense linears, fprop for the experts); the weight gradient needs both operands re-tiled along
// the token dimension (128 x 1), prepared right after dgrad — for the experts, the operands of
// hidden width only in the W pass.
Op make_linear(const Ctx& c, const LinearSpec& s) {
  Op op;
  op.name = s.name;
  op.kind = s.kind;
  op.part = s.part;
  op.params = s.params;
  op.routed = s.routed;
  const bool fp8 = s.fp8 && c.p.fp8;
  op.fp8_params = fp8;
  const Dtype dt = fp8 ? Dtype::fp8_e4m3 : Dtype::bf16;
  const double M = s.rows, K = static_cast<double>(s.in), N = static_cast<double>(s.out);
  const int64_t m_per = static_cast<int64_t>(std::ceil(M / static_cast<double>(s.count)));

  Gemm fprop{s.name + ".fprop", m_per, s.out, s.in, s.count, dt, dt, s.out_dtype, fp8, false};
  Gemm dgrad{s.name + ".dgrad", m_per, s.in, s.out, s.count, dt, dt, Dtype::bf16, fp8, false};
  Gemm wgrad{s.name + ".wgrad", s.out, s.in, m_per, s.count, dt, dt, Dtype::fp32, false, true};
  fprop.role = GemmRole::fprop;
  dgrad.role = GemmRole::dgrad;
  wgrad.role = GemmRole::wgrad;
  wgrad.per_group_launch = s.count > 1;
  fprop.scale_tile = dgrad.scale_tile = wgrad.scale_tile = c.p.act_tile;
  fprop.weight_block = dgrad.weight_block = wgrad.weight_block = c.p.weight_block;

  // Casting a BF16 input to FP8 (+ scales): read 2 bytes, write 1 byte and scales.
  const double quantise_in = M * K * 2.0 + c.fp8_tensor(M, K);
  const double quantise_dy = M * N * 2.0 + c.fp8_tensor(M, N);
  const double weight_transpose = 2.0 * N * K * static_cast<double>(s.count);
  auto gemm_pass = [&](PassCost& pass, const Gemm& g, double cast_bytes, bool transpose_weight) {
    if (fp8) {
      if (cast_bytes > 0) pass.add(s.name + ".quantize", KernelFamily::cast, cast_bytes);
      if (transpose_weight) pass.add(s.name + ".weight_transpose", KernelFamily::cast, weight_transpose);
      pass.add(s.name + ".scale_layout", KernelFamily::cast, 2.0 * c.scales(static_cast<double>(g.m * g.count), static_cast<double>(g.k)));
    }
    pass.gemms.push_back(g);
  };
  const bool needs_cast = s.input != Input::fp8_arrives;
  gemm_pass(op.fwd, fprop, needs_cast ? quantise_in : 0.0, s.routed);
  gemm_pass(op.bwd_input, dgrad, s.grad_arrives_fp8 ? 0.0 : quantise_dy, !s.routed);
  PassCost& wpass = s.wgrad_with_dgrad ? op.bwd_input : op.bwd_weight;
  if (fp8) {
    // Wgrad operands re-tiled 128 x 1 along the tokens: the cached input (dequantised,
    // transposed, requantised) and dY (cast column-wise).
    // A recomputed input is read in BF16 straight from its recomputation.
    const double x_in = s.input == Input::recomputed ? M * K * 2.0 : c.cached(M, K);
    const double x_t = x_in + M * K + K * ceil_div(M, c.tile()) * 4.0;
    const double dy_t = M * N * 2.0 + M * N + N * ceil_div(M, c.tile()) * 4.0;
    const double hidden = c.hidden();
    PassCost& x_pass = (s.routed && K == hidden) ? op.bwd_weight : op.bwd_input;
    PassCost& dy_pass = (s.routed && N == hidden) ? op.bwd_weight : op.bwd_input;
    x_pass.add(s.name + ".input_transpose", KernelFamily::cast, x_t);
    dy_pass.add(s.name + ".grad_transpose", KernelFamily::cast, dy_t);
  }
  wpass.gemms.push_back(wgrad);
  if (s.input == Input::bf16) op.kept_bytes = c.cached(M, K);
  if (s.recompute_output) gemm_pass(op.recompute, fprop, needs_cast ? quantise_in : 0.0, s.routed);
  return op;
}

// RMSNorm. `residual`: the norm is fused with the residual add before it (DeepSeek's
// DropoutAddLayerNorm): forward reads the branch output and the residual stream and writes the
// new residual stream and the normalised output; backward also adds the residual gradient.
Op make_norm(const Ctx& c, const std::string& name, Part part, double rows, int64_t dim, bool residual) {
  Op op;
  op.name = name;
  op.kind = OpKind::norm;
  op.part = part;
  op.params = dim;
  const double d = static_cast<double>(dim);
  const double tensor = rows * d * 2.0;
  op.fwd.add(name, KernelFamily::norm, tensor * (residual ? 4.0 : 2.0) + rows * 4.0 + d * 2.0, 4.0 * rows * d);
  // Backward: dx from x, dy (and the residual gradient); dgamma partials, then their reduction
  // and the accumulation into the FP32 gradient.
  op.bwd_input.add(name + ".backward", KernelFamily::norm, tensor * (residual ? 4.0 : 3.0) + rows * 4.0 + d * 4.0,
                   8.0 * rows * d, 2);
  op.bwd_input.add(name + ".accumulate_grad", KernelFamily::elementwise, d * 4.0 * 3.0);
  if (c.rc.rmsnorm) op.recompute.add(name + ".recompute", KernelFamily::norm, tensor * 2.0 + rows * 4.0 + d * 2.0, 4.0 * rows * d);
  op.kept_bytes = rows * d * 2.0 + rows * 4.0;  // the input (and rstd) backward needs
  if (!c.rc.rmsnorm) op.kept_bytes += rows * d * 2.0;  // the output, kept for its consumers
  return op;
}

// SwiGLU on the fused gate|up GEMM output (rows x 2I) -> rows x I, written straight as the FP8
// input of the down projection. Routed experts also apply the routing weight here, so its
// gradient comes from the same recomputed output (no expert outputs kept for combine); its
// backward is a kernel of its own.
Op make_swiglu(const Ctx& c, const std::string& name, double rows, int64_t inter, bool gated) {
  Op op;
  op.name = name;
  op.kind = OpKind::swiglu;
  op.part = Part::mlp;
  const double I = static_cast<double>(inter);
  const double out_bytes = c.p.fp8 ? c.fp8_tensor(rows, I) : rows * I * 2.0;
  const double in_cache = c.cached(rows, 2 * I);
  const double weights = gated ? rows * 4.0 : 0.0;
  op.fwd.add(name, KernelFamily::swiglu, rows * 2 * I * 2.0 + out_bytes + (in_cache == rows * 2 * I * 2.0 ? 0.0 : in_cache) + weights,
             rows * I * (gated ? 7.0 : 6.0));
  // Backward (with the forward recomputed in the same kernel when SwiGLU is recomputed): the
  // cached input and dY in, d(gate|up) out, and the re-tiled output the down wgrad needs.
  op.bwd_input.add(name + ".backward", KernelFamily::swiglu,
                   in_cache + rows * I * 2.0 + rows * 2 * I * 2.0 + (c.rc.swiglu ? out_bytes : 0.0) + weights,
                   rows * I * (c.rc.swiglu ? 18.0 : 12.0));
  if (gated) op.bwd_input.add(name + ".weight_backward", KernelFamily::swiglu, rows * I * 2.0 * 2.0 + rows * 4.0, rows * I * 2.0);
  op.kept_bytes = in_cache + weights;
  if (!c.rc.swiglu) op.kept_bytes += out_bytes;
  return op;
}

// The attention core as FlashAttention runs it for MLA: RoPE on the decoupled q and k parts,
// copies that build the per-head q and k of width nope + rope (k's rope part broadcast to every
// head), the fused kernel; backward undoes the rope on dq and sums dk's rope part over heads,
// and splits the gradients back. With the up-projections recomputed, backward redoes the rope
// and the copies first.
Op make_attention_core(const Ctx& c) {
  const ModelCard& m = c.m;
  const double nh = static_cast<double>(m.num_attention_heads);
  const double dqk = static_cast<double>(m.q_head_dim());
  const double dv = static_cast<double>(m.v_head_dim);
  const double dr = static_cast<double>(m.qk_rope_head_dim);
  const double dn = static_cast<double>(m.qk_nope_head_dim);
  const double pairs = c.seqs * nh * c.S * (c.S + 1) / 2.0;  // causal, diagonal included
  Op op;
  op.name = "attention";
  op.kind = OpKind::attention_core;
  op.part = Part::attention;
  const double q = c.T * nh * dqk * 2.0, k = c.T * nh * dqk * 2.0, v = c.T * nh * dv * 2.0;
  const double o = c.T * nh * dv * 2.0, lse = c.T * nh * 4.0;
  // q comes out of q_b already per head [nope | rope]: its rope part is rotated and copied back;
  // k is built from kv_b's nope part and the one shared rope key, broadcast to every head.
  PassCost prepare;
  prepare.add("attention.rope", KernelFamily::rope, c.T * (nh + 1) * dr * 2.0 * 2.0, c.T * (nh + 1) * dr * 3.0, 2);
  prepare.add("attention.build_heads", KernelFamily::copy,
              k + c.T * (nh * dn + dr) * 2.0 + c.T * nh * dr * 2.0 * 2.0, 0, 2);
  op.fwd = prepare;
  op.fwd.attention_flops = 2.0 * pairs * dqk + 2.0 * pairs * dv;
  op.fwd.attention_bytes = q + k + v + o + lse;
  op.fwd.attention_launches = 1;
  op.bwd_input.attention_flops = 2.0 * op.fwd.attention_flops;
  op.bwd_input.attention_bytes = q + k + v + o + o + lse + q + k + v;  // + dO in; dQ, dK, dV out
  op.bwd_input.attention_launches = 3;
  op.bwd_input.add("attention.rope_backward", KernelFamily::rope, c.T * nh * dr * 2.0 * 3.0 + c.T * dr * 2.0 * 2.0, c.T * nh * dr * 4.0, 3);
  // dK's nope part and dV gathered into kv_b's output gradient [nope | v] per head.
  op.bwd_input.add("attention.split_grads", KernelFamily::copy, k + v + c.T * nh * (dn + dv) * 2.0, 0, 2);
  op.recompute.attention_flops = 2.0 * pairs * dqk;  // flash backward rebuilds S = QK^T
  if (c.rc.mla_up_projection) op.recompute += prepare;
  // Kept: softmax statistics and the RoPE'd shared key; Q, K, V too when the up-projections
  // are not recomputed. The output O is kept once, as the input cache of o_proj.
  op.kept_bytes = lse + c.T * dr * 2.0;
  if (!c.rc.mla_up_projection) op.kept_bytes += q + c.T * nh * dn * 2.0 + v;
  return op;
}

void add_attention_ops(const Ctx& c, std::vector<Op>& ops, const std::string& prefix) {
  const ModelCard& m = c.m;
  const int64_t h = m.hidden_size, nh = m.num_attention_heads;
  // A norm's output feeds the next linear; with RMSNorm recompute the linear keeps nothing and
  // re-quantises in backward, without it the norm keeps its output (make_norm) instead.
  const Input after_norm = Input::recomputed;
  ops.push_back(make_norm(c, prefix + "attn_norm", Part::attention, c.T, h, true));
  if (m.q_lora_rank) {
    const int64_t dq = *m.q_lora_rank;
    ops.push_back(make_linear(c, {prefix + "q_a_proj", Part::attention, c.T, h, dq, 1, h * dq,
                                  false, true, after_norm}));
    ops.push_back(make_norm(c, prefix + "q_a_norm", Part::attention, c.T, dq, false));
    ops.push_back(make_linear(c, {prefix + "q_b_proj", Part::attention, c.T, dq,
                                  nh * m.q_head_dim(), 1, dq * nh * m.q_head_dim(), false, true,
                                  after_norm, c.rc.mla_up_projection}));
  } else {
    ops.push_back(make_linear(c, {prefix + "q_proj", Part::attention, c.T, h, nh * m.q_head_dim(),
                                  1, h * nh * m.q_head_dim(), false, true, after_norm}));
  }
  const int64_t kva = m.kv_lora_rank + m.qk_rope_head_dim;
  ops.push_back(make_linear(c, {prefix + "kv_a_proj", Part::attention, c.T, h, kva, 1, h * kva,
                                false, true, after_norm}));
  Op kv_norm = make_norm(c, prefix + "kv_a_norm", Part::attention, c.T, m.kv_lora_rank, false);
  // kv_a's output is split into the latent and the rope key: the latent is made contiguous.
  kv_norm.fwd.add(prefix + "kv_a_norm.contiguous", KernelFamily::copy, c.T * static_cast<double>(m.kv_lora_rank) * 2.0 * 2.0);
  ops.push_back(kv_norm);
  const int64_t kvb = nh * (m.qk_nope_head_dim + m.v_head_dim);
  ops.push_back(make_linear(c, {prefix + "kv_b_proj", Part::attention, c.T, m.kv_lora_rank, kvb, 1,
                                m.kv_lora_rank * kvb, false, true, after_norm,
                                c.rc.mla_up_projection}));
  ops.push_back(make_attention_core(c));
  ops.back().name = prefix + "attention";
  const double attn_out = static_cast<double>(nh * m.v_head_dim);
  Op o = make_linear(c, {prefix + "o_proj", Part::attention, c.T, nh * m.v_head_dim, h, 1,
                         nh * m.v_head_dim * h, false, true, Input::bf16});
  if (c.p.fp8 && c.rc.fp8_activation_cache) {
    // The report caches this input in E5M6 (12 bits) with power-of-two 1 x 128 scales: a cast
    // of its own in forward, a cast back before the weight gradient's re-tiling.
    const double rows = c.T, e5m6 = bytes_per_element(c.p.attn_out_cache);
    o.kept_bytes = rows * attn_out * e5m6 + c.scales(rows, attn_out);
    o.fwd.add(prefix + "o_proj.cache_input", KernelFamily::cast, rows * attn_out * (2.0 + e5m6) + c.scales(rows, attn_out));
    o.bwd_input.add(prefix + "o_proj.uncache_input", KernelFamily::cast, rows * attn_out * (2.0 + e5m6) + c.scales(rows, attn_out));
  }
  // The branch output scaled before the residual add (fused into the next norm), and its
  // gradient likewise.
  o.fwd.add(prefix + "o_proj.branch_scale", KernelFamily::elementwise, c.T * static_cast<double>(h) * 2.0 * 2.0, c.T * static_cast<double>(h));
  o.bwd_input.add(prefix + "o_proj.branch_scale_backward", KernelFamily::elementwise, c.T * static_cast<double>(h) * 2.0 * 2.0);
  ops.push_back(o);
  Op mlp_norm = make_norm(c, prefix + "mlp_norm", Part::attention, c.T, h, true);
  if (!mlp_norm.recompute.empty()) {
    // Its output is rebuilt where the MLP's backward needs it (the shared experts' and router's
    // inputs): in the MLP part's backward, not the attention part's.
    Op again;
    again.name = prefix + "mlp_norm.recompute";
    again.kind = OpKind::norm;
    again.part = Part::mlp;
    std::swap(again.recompute, mlp_norm.recompute);
    ops.push_back(mlp_norm);
    ops.push_back(again);
  } else {
    ops.push_back(mlp_norm);
  }
}

void add_dense_ffn(const Ctx& c, std::vector<Op>& ops, const std::string& prefix) {
  const int64_t h = c.m.hidden_size, I = c.m.intermediate_size;
  ops.push_back(make_linear(c, {prefix + "ffn.gate_up", Part::mlp, c.T, h, 2 * I, 1, 2 * I * h,
                                false, true, Input::recomputed}));
  ops.push_back(make_swiglu(c, prefix + "ffn.swiglu", c.T, I, false));
  ops.push_back(make_linear(c, {prefix + "ffn.down", Part::mlp, c.T, I, h, 1, I * h, false, true,
                                Input::fp8_arrives}));
}

// The gate as DeepSeek's PyTorch implementation runs it (its profiler trace): a BF16 GEMM to FP32
// scores, then a chain of small kernels — score function, bias, group scores, group and expert
// top-k, masks, gathers, normalisation and the balance statistics — about thirty launches, two of
// them top-k passes over every expert score; backward about twenty-five, plus the gate's two
// GEMMs (its weight gradient is not deferred).
constexpr int kRouterForwardLaunches = 32;
constexpr int kRouterBackwardLaunches = 24;

void add_moe(const Ctx& c, const ExpertLayout& layout, const RoutingFanout& fanout,
             std::vector<Op>& ops, const std::string& prefix) {
  const ModelCard& m = c.m;
  const int64_t h = m.hidden_size, E = m.n_routed_experts, k = m.num_experts_per_tok;
  const int64_t I = m.moe_intermediate_size;
  const double H = static_cast<double>(h), Ed = static_cast<double>(E);
  const double rows = c.T * static_cast<double>(k);  // token-expert rows per GPU (balanced)
  // Distinct tokens a GPU receives: each sent token lands once on every GPU holding one of its
  // experts (balanced: as many as a token reaches, per sender).
  const double received = c.T * std::max(1.0, fanout.dest_gpus);
  const int64_t local = std::max<int64_t>(1, E / std::max<int64_t>(1, layout.ep));

  // Router: BF16 inputs, FP32 scores (kept out of FP8 by the recipe).
  LinearSpec gate{prefix + "router", Part::attention, c.T, h, E, 1, E * h, false,
                  false, Input::recomputed, false, OpKind::router, Dtype::fp32};
  gate.wgrad_with_dgrad = true;
  Op router = make_linear(c, gate);
  const double scores = c.T * Ed * 4.0;
  // Forward streams the scores about ten times (two of them top-k passes); backward, without
  // top-k, about three.
  router.fwd.add(prefix + "router.select", KernelFamily::router, scores * 10.0 + c.T * static_cast<double>(k) * 12.0,
                 c.T * Ed * 8.0, kRouterForwardLaunches);
  router.bwd_input.add(prefix + "router.select_backward", KernelFamily::router, scores * 3.0, c.T * Ed * 4.0,
                       kRouterBackwardLaunches);
  router.bwd_input.add(prefix + "router.accumulate_input_grad", KernelFamily::elementwise, c.T * H * 2.0 * 3.0, c.T * H);
  router.kept_bytes = c.T * Ed * 4.0 + c.T * static_cast<double>(k) * 8.0;  // scores, chosen experts and weights
  ops.push_back(router);

  // Dispatch preparation: the normalised tokens cast to the wire format (FP8 + scales, also the
  // shared experts' input).
  Op prep;
  prep.name = prefix + "dispatch_prep";
  prep.kind = OpKind::quantize;
  prep.part = Part::attention;
  if (c.fp8_dispatch()) prep.fwd.add(prep.name, KernelFamily::cast, c.T * H * 2.0 + c.fp8_tensor(c.T, H), c.T * H * 2.0);
  ops.push_back(prep);

  // fp8: the FP8 recipe (the expert output's FP8 cache); wire8: the tokens and combine's backward
  // gradients travel as FP8 (with a BF16 dispatch under the FP8 recipe each GEMM casts its own).
  const bool fp8 = c.p.fp8, wire8 = c.fp8_dispatch();
  const Input arrives = wire8 ? Input::fp8_arrives : Input::bf16;
  const double token_bytes = wire8 ? c.fp8_tensor(1, H) : H * 2.0;
  Op gate_up = make_linear(c, {prefix + "experts.gate_up", Part::mlp, rows, h, 2 * I, local,
                               E * 2 * I * h, true, true, arrives});
  if (arrives == Input::fp8_arrives) gate_up.kept_bytes = c.cached(rows, H);
  // Received tokens to expert-major rows: count tokens per expert, build the mapping, expand.
  gate_up.fwd.kernels.insert(gate_up.fwd.kernels.begin(),
                             {MemoryKernel{prefix + "experts.count_and_map", KernelFamily::permute,
                                           rows * 8.0 * 4.0 + Ed * 4.0, 0, 2},
                              MemoryKernel{prefix + "experts.expand", KernelFamily::permute,
                                           (received + rows) * token_bytes, 0, 1}});
  // Backward: the arriving (FP8) output gradient dequantised and expanded to expert rows; the
  // input gradient of the expert rows reduced back to the received tokens for combine's backward.
  Op swiglu = make_swiglu(c, prefix + "experts.swiglu", rows, I, true);
  LinearSpec down_spec{prefix + "experts.down", Part::mlp, rows, I, h, local, E * I * h, true, true, Input::fp8_arrives};
  down_spec.grad_arrives_fp8 = wire8;
  Op experts_down = make_linear(c, down_spec);
  // Expert rows summed back per received token with the routing weights (each token's experts on
  // this GPU), and the sum cast for the FP8 cache of the layer's output rows.
  experts_down.fwd.add(prefix + "experts.reduce", KernelFamily::permute, rows * H * 2.0 + received * H * 2.0 + rows * 4.0,
                       rows * H * 2.0);
  if (fp8) experts_down.fwd.add(prefix + "experts.quantize_output", KernelFamily::cast, received * H * 2.0 + c.fp8_tensor(received, H));
  if (wire8) experts_down.bwd_input.kernels.insert(experts_down.bwd_input.kernels.begin(),
                                                 MemoryKernel{prefix + "experts.dequantize_grad", KernelFamily::cast,
                                                              c.fp8_tensor(received, H) + received * H * 2.0});
  experts_down.bwd_input.kernels.insert(experts_down.bwd_input.kernels.begin() + (wire8 ? 1 : 0),
                                        MemoryKernel{prefix + "experts.expand_grad", KernelFamily::permute,
                                                     (received + rows) * token_bytes});
  gate_up.bwd_input.add(prefix + "experts.reduce_grad", KernelFamily::permute, rows * H * 2.0 + received * H * 2.0, rows * H);
  for (Op* op : {&gate_up, &swiglu, &experts_down}) {
    op->per_routed_row = true;
    ops.push_back(*op);
  }
  if (m.n_shared_experts > 0) {
    const int64_t Is = I * m.n_shared_experts;
    ops.push_back(make_linear(c, {prefix + "shared.gate_up", Part::mlp, c.T, h, 2 * Is, 1,
                                  2 * Is * h, false, true, wire8 ? Input::fp8_arrives : Input::recomputed}));
    ops.push_back(make_swiglu(c, prefix + "shared.swiglu", c.T, Is, false));
    LinearSpec shared_down{prefix + "shared.down", Part::mlp, c.T, Is, h, 1, Is * h, false, true, Input::fp8_arrives};
    shared_down.grad_arrives_fp8 = wire8;
    ops.push_back(make_linear(c, shared_down));
  }
}

AllToAll make_all_to_all(const Ctx& c, const RoutingFanout& f) {
  AllToAll a;
  const double h = static_cast<double>(c.m.hidden_size);
  a.tokens = c.T;
  a.dest_nodes_per_token = f.dest_nodes;
  a.remote_nodes_per_token = f.remote_nodes;
  a.dest_gpus_per_token = f.dest_gpus;
  a.nvlink_sends_per_token = f.nvlink_sends;
  a.dispatch_bytes_per_copy = c.fp8_dispatch() ? h + ceil_div(h, c.tile()) * 4.0 : h * 2.0;
  a.combine_bytes_per_copy = h * 2.0;
  return a;
}

Block transformer_block(const Ctx& c, const ExpertLayout& layout, int64_t layer,
                        const std::string& name, BlockKind kind_if_dense) {
  Block b;
  b.name = name;
  b.layer = layer;
  const bool moe = c.m.is_moe_layer(layer);
  b.kind = moe ? (kind_if_dense == BlockKind::mtp ? BlockKind::mtp : BlockKind::moe_layer)
               : kind_if_dense;
  const std::string prefix = kind_if_dense == BlockKind::mtp ? name + "." : "";
  add_attention_ops(c, b.ops, prefix);
  if (moe) {
    const RoutingFanout fanout = sample_routing_fanout(c.m, layout);
    add_moe(c, layout, fanout, b.ops, prefix);
    b.has_all_to_all = true;
    b.all_to_all = make_all_to_all(c, fanout);
    b.routing = routing_pattern(c.m, layout, layer);
  } else {
    add_dense_ffn(c, b.ops, prefix);
  }
  return b;
}

Op make_embedding(const Ctx& c, const std::string& name, int64_t params) {
  const double h = static_cast<double>(c.m.hidden_size);
  Op op;
  op.name = name;
  op.kind = OpKind::embedding;
  op.part = Part::attention;
  op.params = params;
  op.fwd.add(name, KernelFamily::embedding, c.T * 4.0 + c.T * h * 2.0 * 2.0);  // ids, gather rows, write
  op.bwd_weight.add(name + ".scatter_grad", KernelFamily::embedding, c.T * h * 2.0 + c.T * h * 4.0 * 2.0, c.T * h);
  op.kept_bytes = c.T * 4.0;
  return op;
}

// Output head and cross-entropy: BF16 GEMM with FP32 logits; the loss keeps the softmax in BF16
// for its backward (no logit recomputation).
void add_head_and_loss(const Ctx& c, std::vector<Op>& ops, const std::string& prefix,
                       int64_t head_params) {
  const int64_t h = c.m.hidden_size, V = c.m.vocab_size;
  ops.push_back(make_linear(c, {prefix + "head", Part::mlp, c.T, h, V, 1, head_params, false,
                                false, Input::recomputed, false, OpKind::head, Dtype::fp32}));
  Op loss;
  loss.name = prefix + "loss";
  loss.kind = OpKind::loss;
  loss.part = Part::mlp;
  const double tv = c.T * static_cast<double>(V);
  loss.fwd.add(loss.name, KernelFamily::loss, tv * 4.0 + tv * 2.0, 5.0 * tv);
  loss.bwd_input.add(loss.name + ".backward", KernelFamily::loss, tv * 2.0 + tv * 2.0, 2.0 * tv);
  loss.kept_bytes = tv * 2.0;
  ops.push_back(loss);
}

}  // namespace

double Gemm::flops() const {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) *
         static_cast<double>(count);
}

double Gemm::bytes() const {
  const double M = static_cast<double>(m), N = static_cast<double>(n), K = static_cast<double>(k);
  const double t = static_cast<double>(scale_tile), w = static_cast<double>(weight_block);
  double bytes = M * K * bytes_per_element(a) + N * K * bytes_per_element(b) +
                 M * N * bytes_per_element(out) * (accumulate ? 2.0 : 1.0);
  if (a == Dtype::fp8_e4m3) bytes += M * std::ceil(K / t) * 4.0;
  if (b == Dtype::fp8_e4m3)
    bytes += b_block_scaled ? std::ceil(N / w) * std::ceil(K / w) * 4.0 : N * std::ceil(K / t) * 4.0;
  return bytes * static_cast<double>(count);
}

double PassCost::flops() const {
  double f = attention_flops;
  for (const auto& g : gemms) f += g.flops();
  return f;
}

double PassCost::memory_bytes() const {
  double b = 0;
  for (const auto& k : kernels) b += k.bytes;
  return b;
}

double PassCost::bytes() const {
  double b = attention_bytes + memory_bytes();
  for (const auto& g : gemms) b += g.bytes();
  return b;
}

double PassCost::vector_flops() const {
  double f = 0;
  for (const auto& k : kernels) f += k.flops;
  return f;
}

int PassCost::launches() const {
  int n = attention_launches;
  for (const auto& g : gemms) n += g.launches();
  for (const auto& k : kernels) n += k.launches;
  return n;
}

void PassCost::add(const std::string& name, KernelFamily family, double bytes, double flops, int launches) {
  kernels.push_back(MemoryKernel{name, family, bytes, flops, launches});
}

PassCost& PassCost::operator+=(const PassCost& o) {
  gemms.insert(gemms.end(), o.gemms.begin(), o.gemms.end());
  attention_flops += o.attention_flops;
  attention_bytes += o.attention_bytes;
  attention_launches += o.attention_launches;
  kernels.insert(kernels.end(), o.kernels.begin(), o.kernels.end());
  return *this;
}

const char* to_string(GemmRole r) {
  switch (r) {
    case GemmRole::fprop: return "fprop";
    case GemmRole::dgrad: return "dgrad";
    case GemmRole::wgrad: return "wgrad";
  }
  return "?";
}

const char* to_string(KernelFamily f) {
  switch (f) {
    case KernelFamily::cast: return "cast";
    case KernelFamily::norm: return "norm";
    case KernelFamily::rope: return "rope";
    case KernelFamily::copy: return "copy";
    case KernelFamily::permute: return "permute";
    case KernelFamily::swiglu: return "swiglu";
    case KernelFamily::router: return "router";
    case KernelFamily::elementwise: return "elementwise";
    case KernelFamily::embedding: return "embedding";
    case KernelFamily::loss: return "loss";
    case KernelFamily::optimizer: return "optimizer";
  }
  return "?";
}

bool kernel_family_from_string(const std::string& name, KernelFamily* out) {
  for (int i = 0; i < kKernelFamilies; ++i) {
    const auto f = static_cast<KernelFamily>(i);
    if (name == to_string(f)) {
      *out = f;
      return true;
    }
  }
  return false;
}

const char* to_string(Part p) {
  switch (p) {
    case Part::attention: return "attention";
    case Part::dispatch: return "dispatch";
    case Part::mlp: return "mlp";
    case Part::combine: return "combine";
  }
  return "?";
}

const char* to_string(OpKind k) {
  switch (k) {
    case OpKind::embedding: return "embedding";
    case OpKind::norm: return "norm";
    case OpKind::linear: return "linear";
    case OpKind::attention_core: return "attention_core";
    case OpKind::router: return "router";
    case OpKind::swiglu: return "swiglu";
    case OpKind::quantize: return "quantize";
    case OpKind::head: return "head";
    case OpKind::loss: return "loss";
  }
  return "?";
}

const char* to_string(BlockKind k) {
  switch (k) {
    case BlockKind::embedding: return "embedding";
    case BlockKind::dense_layer: return "dense_layer";
    case BlockKind::moe_layer: return "moe_layer";
    case BlockKind::head: return "head";
    case BlockKind::mtp: return "mtp";
  }
  return "?";
}

int64_t Block::params() const {
  int64_t p = 0;
  for (const auto& op : ops) p += op.params;
  return p;
}

int64_t Block::routed_params() const {
  int64_t p = 0;
  for (const auto& op : ops) p += op.routed ? op.params : 0;
  return p;
}

double Block::model_flops() const {
  double f = 0;
  for (const auto& op : ops) f += op.model_flops();
  return f;
}

double Block::fwd_flops() const {
  double f = 0;
  for (const auto& op : ops) f += op.fwd.flops();
  return f;
}

double Block::kept_bytes() const {
  double b = 0;
  for (const auto& op : ops) b += op.kept_bytes;
  return b;
}

Workload build_workload(const ModelCard& m, const MicroBatch& mb, const PrecisionRecipe& p,
                        const RecomputePolicy& rc, const ExpertLayout& layout) {
  Workload w;
  w.model = m;
  w.micro_batch = mb;
  w.precision = p;
  w.recompute = rc;
  w.layout = layout;
  const Ctx c{m, p, rc, static_cast<double>(mb.tokens()), static_cast<double>(mb.seq_len),
              static_cast<double>(mb.sequences)};
  const int64_t h = m.hidden_size, V = m.vocab_size;

  Block embed;
  embed.name = "embedding";
  embed.kind = BlockKind::embedding;
  embed.ops.push_back(make_embedding(c, "embed", V * h));
  w.blocks.push_back(embed);

  std::vector<int64_t> moe_layers;
  for (int64_t i = 0; i < m.num_hidden_layers + m.num_nextn_predict_layers; ++i)
    if (m.is_moe_layer(i)) moe_layers.push_back(i);
  prefetch_routing_patterns(m, layout, moe_layers);

  for (int64_t i = 0; i < m.num_hidden_layers; ++i)
    w.blocks.push_back(transformer_block(c, layout, i, "layer." + std::to_string(i),
                                         BlockKind::dense_layer));

  Block head;
  head.name = "head";
  head.kind = BlockKind::head;
  head.ops.push_back(make_norm(c, "final_norm", Part::mlp, c.T, h, true));
  add_head_and_loss(c, head.ops, "", m.tie_word_embeddings ? 0 : V * h);
  w.blocks.push_back(head);

  // MTP module d (report §2.2): shared embedding of the tokens shifted by d+1, RMSNorm of it
  // and of the previous depth's hidden state, a 2h -> h projection, one transformer layer (MoE
  // or dense by its index after the main layers), its own final norm, the shared output head.
  for (int64_t d = 0; d < m.num_nextn_predict_layers; ++d) {
    const std::string name = "mtp." + std::to_string(d);
    Block b = transformer_block(c, layout, m.num_hidden_layers + d, name, BlockKind::mtp);
    b.kind = BlockKind::mtp;
    std::vector<Op> pre;
    pre.push_back(make_embedding(c, name + ".embed", 0));
    pre.push_back(make_norm(c, name + ".enorm", Part::attention, c.T, h, false));
    pre.push_back(make_norm(c, name + ".hnorm", Part::attention, c.T, h, false));
    pre.push_back(make_linear(c, {name + ".eh_proj", Part::attention, c.T, 2 * h, h, 1, 2 * h * h,
                                  false, true, Input::recomputed}));
    b.ops.insert(b.ops.begin(), pre.begin(), pre.end());
    b.ops.push_back(make_norm(c, name + ".final_norm", Part::mlp, c.T, h, true));
    add_head_and_loss(c, b.ops, name + ".", 0);
    w.blocks.push_back(b);
  }
  return w;
}

int64_t Workload::params_main() const {
  int64_t p = 0;
  for (const auto& b : blocks)
    if (b.kind != BlockKind::mtp) p += b.params();
  return p;
}

int64_t Workload::params_mtp_unique() const {
  int64_t p = 0;
  for (const auto& b : blocks)
    if (b.kind == BlockKind::mtp) p += b.params();
  return p;
}

int64_t Workload::params_total() const { return params_main() + params_mtp_unique(); }

namespace {
double active_fraction(const ModelCard& m) {
  return m.n_routed_experts > 0 ? static_cast<double>(m.num_experts_per_tok) /
                                      static_cast<double>(m.n_routed_experts)
                                : 0.0;
}
}  // namespace

int64_t Workload::params_active(bool with_embedding) const {
  double p = 0;
  for (const auto& b : blocks) {
    if (b.kind == BlockKind::mtp) continue;
    if (b.kind == BlockKind::embedding && !with_embedding) continue;
    p += static_cast<double>(b.params() - b.routed_params()) +
         static_cast<double>(b.routed_params()) * active_fraction(model);
  }
  return static_cast<int64_t>(std::llround(p));
}

int64_t Workload::params_mtp_active() const {
  if (model.num_nextn_predict_layers == 0) return 0;
  double p = 0;
  for (const auto& b : blocks) {
    if (b.kind == BlockKind::mtp)
      p += static_cast<double>(b.params() - b.routed_params()) +
           static_cast<double>(b.routed_params()) * active_fraction(model);
    if (b.kind == BlockKind::embedding || b.kind == BlockKind::head) {
      for (const auto& op : b.ops)
        if (op.kind == OpKind::embedding || op.kind == OpKind::head) p += static_cast<double>(op.params);
    }
  }
  return static_cast<int64_t>(std::llround(p));
}

namespace {
// FLOPs of the given blocks for one micro-batch; attention rescaled to the full s^2 if
// non-causal (the causal count covers s(s+1)/2 pairs per sequence and head).
double flops_of(const Workload& w, bool mtp, bool causal, bool forward_only) {
  const double S = static_cast<double>(w.micro_batch.seq_len);
  const double attn_scale = causal ? 1.0 : 2.0 * S / (S + 1.0);
  double f = 0;
  for (const auto& b : w.blocks) {
    if ((b.kind == BlockKind::mtp) != mtp) continue;
    for (const auto& op : b.ops) {
      for (const PassCost* pc : {&op.fwd, &op.bwd_input, &op.bwd_weight}) {
        if (forward_only && pc != &op.fwd) continue;
        f += pc->flops() - pc->attention_flops + pc->attention_flops * attn_scale;
      }
    }
  }
  return f;
}
}  // namespace

double Workload::train_flops_per_token(bool causal) const {
  return flops_of(*this, false, causal, false) / static_cast<double>(micro_batch.tokens());
}

double Workload::forward_flops_per_token(bool causal) const {
  return flops_of(*this, false, causal, true) / static_cast<double>(micro_batch.tokens());
}

double Workload::mtp_train_flops_per_token() const {
  return flops_of(*this, true, true, false) / static_cast<double>(micro_batch.tokens());
}

double Workload::kv_cache_bytes_per_token() const {
  return static_cast<double>(model.kv_lora_rank + model.qk_rope_head_dim) *
         static_cast<double>(model.num_hidden_layers) * bytes_per_element(Dtype::bf16);
}

}  // namespace tandem
