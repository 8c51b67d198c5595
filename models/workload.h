// Workload: what one micro-batch costs, layer by layer and op by op, before any engine runs.
//
// Pure arithmetic from a model card, a micro-batch shape, a precision recipe, a recompute policy
// and the expert-parallel layout. For every op: parameters; FLOPs and HBM bytes of forward (F),
// backward-for-input (B) and backward-for-weights (W), plus what backward recomputes; the bytes
// kept from forward until backward. MoE layers also carry their all-to-all volumes.
//
// Conventions (each figure says which it uses):
//  - FLOPs: a multiply-add is 2 FLOPs. A linear costs 2·M·N·K in each of F, B and W.
//  - Attention core: causal, counted over the lower triangle including the diagonal
//    (s(s+1)/2 query-key pairs per sequence and head); F = QK^T + PV, B = 2F (dQ, dK, dV, dP),
//    W = 0. `noncausal_*` figures count the full s^2.
//  - "Model" FLOPs exclude recomputation; recompute FLOPs are reported on their own.
//  - Routed experts are costed per GPU under balanced routing: a GPU holding E/ep experts
//    processes tokens·top_k token-expert rows per micro-batch, as the whole model does per token.
//  - Bytes are HBM traffic of the kernels, dtype-aware: FP8 operands carry their FP32 scales
//    (1 x 128 tiles for activations and gradients, 128 x 128 blocks for weights).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "models/model_card.h"
#include "models/precision.h"
#include "models/routing_fanout.h"

namespace tandem {

struct MicroBatch {
  int64_t sequences = 1;
  int64_t seq_len = 4096;
  int64_t tokens() const { return sequences * seq_len; }
};

// How routed experts are spread: needed for per-GPU GEMM shapes and all-to-all volumes.
struct ExpertLayout {
  int64_t ep = 1;             // expert-parallel degree (GPUs sharing one layer's experts)
  int64_t gpus_per_node = 8;  // for deduplication per destination node
  int64_t node_limit = 0;     // max groups (nodes) per token; 0 = the model's topk_group
  uint64_t routing_seed = 1;  // for the sampled routing fan-out
  double routing_skew = 0;    // per-expert logit offset spread (0: balanced routing)
  // Measured routing (set: skew is not used): each layer's expert offsets are fitted to this
  // histogram (models/routing_fanout.h). Shared, as layouts are copied into every Workload.
  std::shared_ptr<const RoutingHistogram> routing_histogram = nullptr;
};

// Which of a linear's three GEMMs: forward, backward-for-input, backward-for-weights. Kernel
// libraries implement them differently (DeepGEMM's weight-gradient kernels accumulate into FP32
// and run well below its forward ones), so the cost model looks each role up on its own.
enum class GemmRole { fprop, dgrad, wgrad };
const char* to_string(GemmRole r);

// One GEMM (or `count` identical ones, e.g. the local experts of a grouped GEMM):
// C[m x n] = A[m x k] · B[n x k]^T, the "TN" layout of cuBLASLt and DeepGEMM.
struct Gemm {
  std::string name;
  int64_t m = 0, n = 0, k = 0;
  int64_t count = 1;
  Dtype a = Dtype::bf16, b = Dtype::bf16, out = Dtype::bf16;
  bool b_block_scaled = false;  // FP8 B scaled per weight_block^2 block (a weight), else per
                                // 1 x scale_tile tile along k (an activation or gradient)
  bool accumulate = false;      // C += A·B^T (reads C too): weight-gradient accumulation
  int64_t scale_tile = 128;
  int64_t weight_block = 128;
  GemmRole role = GemmRole::fprop;
  // One kernel per group (DeepSeek's per-expert weight-gradient GEMMs), not one grouped kernel.
  bool per_group_launch = false;

  double flops() const;
  double bytes() const;  // operands, their scales, output (twice when accumulating)
  int launches() const { return per_group_launch ? static_cast<int>(count) : 1; }
};

// What bounds a memory kernel's speed, for the calibration: each family has its own measured
// fraction of HBM bandwidth, because one family of kernels (e.g. DeepSeek's FP8 casts) reaches
// very different bandwidth from another (e.g. the PyTorch router's many small kernels).
enum class KernelFamily {
  cast,         // FP8 quantise / dequantise / transpose of FP8 data or its scales
  norm,         // RMSNorm forward (fused with the residual add) and backward
  rope,         // rotary embedding and its backward
  copy,         // layout copies (building FlashAttention's q/k heads, splitting gradients)
  permute,      // routed tokens to expert-major rows and back (count, map, expand, reduce)
  swiglu,       // SwiGLU (with the routing weight) and its backward
  router,       // gate scores, group and expert top-k, balance statistics, their backward
  elementwise,  // residual scales and gradient accumulation adds, fills
  embedding,    // embedding gather and its gradient scatter-add
  loss,         // softmax cross-entropy over the vocabulary
  optimizer,    // AdamW over a parameter shard
};
constexpr int kKernelFamilies = 11;
const char* to_string(KernelFamily f);
bool kernel_family_from_string(const std::string& name, KernelFamily* out);

// A memory-bound kernel (or `launches` kernels of one family doing one piece of work): the HBM
// bytes it streams and the arithmetic it does on CUDA cores.
struct MemoryKernel {
  std::string name;
  KernelFamily family = KernelFamily::elementwise;
  double bytes = 0;
  double flops = 0;  // elementwise / reduction arithmetic (not model FLOPs)
  int launches = 1;
};

// The cost of one op in one pass: its kernels, as a DeepSeek-style implementation launches them.
struct PassCost {
  std::vector<Gemm> gemms;        // tensor-core matrix work
  double attention_flops = 0;     // fused attention core (flash-style), BF16 tensor cores
  double attention_bytes = 0;     // its HBM traffic (q, k, v, o, statistics): reported, not timed
  int attention_launches = 0;     // forward 1; backward 3 (pre-processing, main, dQ conversion)
  std::vector<MemoryKernel> kernels;

  double flops() const;           // model FLOPs: GEMMs and attention
  double bytes() const;           // HBM bytes of every kernel
  double memory_bytes() const;    // of the memory kernels only
  double vector_flops() const;    // CUDA-core arithmetic of the memory kernels
  int launches() const;           // kernel launches of the pass
  bool empty() const { return gemms.empty() && attention_flops == 0 && kernels.empty(); }
  void add(const std::string& name, KernelFamily family, double bytes, double flops = 0, int launches = 1);
  PassCost& operator+=(const PassCost& o);
};

// Which DualPipe chunk part an op belongs to (attention → dispatch → mlp → combine).
enum class Part { attention, dispatch, mlp, combine };
const char* to_string(Part p);

enum class OpKind { embedding, norm, linear, attention_core, router, swiglu, quantize, head, loss };
const char* to_string(OpKind k);

struct Op {
  std::string name;     // e.g. "q_a_proj", "experts.gate_up"
  OpKind kind = OpKind::linear;
  Part part = Part::attention;
  int64_t params = 0;   // parameters this op owns (whole model view)
  bool routed = false;  // params belong to routed experts (sharded by EP)
  bool fp8_params = false;  // params used by FP8 GEMMs (a cached FP8 copy exists per step)
  bool per_routed_row = false;  // work scales with the token-expert rows the GPU's experts get
  PassCost fwd, bwd_input, bwd_weight, recompute;
  double kept_bytes = 0;    // kept from forward until this op's backward (per GPU, per micro-batch)

  double model_flops() const { return fwd.flops() + bwd_input.flops() + bwd_weight.flops(); }
};

// All-to-all of one MoE layer for one micro-batch, seen from one GPU (balanced routing).
struct AllToAll {
  double tokens = 0;                 // tokens this GPU sends
  double dest_nodes_per_token = 0;   // distinct nodes a token reaches (its own included)
  double remote_nodes_per_token = 0; // ... other than its own: each crossed once on IB
  double dest_gpus_per_token = 0;    // distinct GPUs holding its experts
  double nvlink_sends_per_token = 0; // NVLink copies: direct (own node) + forwards (remote nodes)
  double dispatch_bytes_per_copy = 0;  // FP8 + 1x128 scales (or BF16)
  double combine_bytes_per_copy = 0;   // BF16
  // Bytes this GPU sends per micro-batch. Backward swaps the shapes: the gradient of combine
  // travels dispatch-shaped (FP8 + scales), the gradient of dispatch combine-shaped (BF16).
  double dispatch_ib_bytes() const { return tokens * remote_nodes_per_token * dispatch_bytes_per_copy; }
  double dispatch_nvlink_bytes() const { return tokens * nvlink_sends_per_token * dispatch_bytes_per_copy; }
  double combine_ib_bytes() const { return tokens * remote_nodes_per_token * combine_bytes_per_copy; }
  double combine_nvlink_bytes() const { return tokens * nvlink_sends_per_token * combine_bytes_per_copy; }
};

enum class BlockKind { embedding, dense_layer, moe_layer, head, mtp };
const char* to_string(BlockKind k);

// A unit the pipeline partitioner places whole on a stage: embedding, one transformer layer,
// the output head with its loss, or one MTP module.
struct Block {
  std::string name;  // "embedding", "layer.3", "head", "mtp.0"
  BlockKind kind = BlockKind::dense_layer;
  int64_t layer = -1;  // transformer layer index for layers
  std::vector<Op> ops;
  bool has_all_to_all = false;
  AllToAll all_to_all;       // balanced-routing averages, seen from one GPU
  RoutingPattern routing;    // per EP-group member (skewed routing: loads and flows differ)

  int64_t params() const;
  int64_t routed_params() const;
  double model_flops() const;
  double fwd_flops() const;
  double kept_bytes() const;
};

struct Workload {
  ModelCard model;
  MicroBatch micro_batch;
  PrecisionRecipe precision;
  RecomputePolicy recompute;
  ExpertLayout layout;
  std::vector<Block> blocks;  // embedding, layer.0 .. layer.L-1, head, mtp.0 .. mtp.D-1

  int64_t params_total() const;        // main model + MTP unique (embedding/head counted once)
  int64_t params_main() const;         // main model only (what "671B" counts)
  int64_t params_mtp_unique() const;   // MTP modules without the shared embedding and head
  // Parameters one token's forward touches in the main model: every non-routed parameter and
  // top_k routed experts per MoE layer. `with_embedding` adds the input embedding table (a
  // lookup, not compute); the output head is always counted.
  int64_t params_active(bool with_embedding) const;
  int64_t params_mtp_active() const;   // MTP module with its shared embedding and head

  // Per token, main model (no MTP), at this micro-batch's sequence length.
  double train_flops_per_token(bool causal = true) const;
  double forward_flops_per_token(bool causal = true) const;
  double mtp_train_flops_per_token() const;
  // Inference KV cache of MLA per token: (kv_lora_rank + rope dim) per layer in BF16.
  double kv_cache_bytes_per_token() const;
};

Workload build_workload(const ModelCard& model, const MicroBatch& mb, const PrecisionRecipe& p,
                        const RecomputePolicy& rc, const ExpertLayout& layout);

}  // namespace tandem
