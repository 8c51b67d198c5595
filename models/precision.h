// Number formats and the training precision recipe (DeepSeek-V3 report §3.3; reference §6.1).
#pragma once

#include <cstdint>
#include <string>

namespace tandem {

enum class Dtype { fp8_e4m3, e5m6, bf16, fp32, int32 };

double bytes_per_element(Dtype d);  // e5m6 is 12 bits = 1.5 bytes
const char* to_string(Dtype d);

struct PrecisionRecipe {
  // true: the transformer's linears (MLA projections, experts, dense FFN, MTP projection) run
  // as FP8 E4M3 GEMMs with 1 x act_tile activation scales and weight_block^2 weight scales
  // (FP32), all three GEMMs of each linear. Embedding, output head, router, norms and the
  // attention core stay in BF16/FP32 either way. false: every GEMM is BF16.
  bool fp8 = true;
  int64_t act_tile = 128;
  int64_t weight_block = 128;
  bool pow2_scales = true;
  Dtype weights = Dtype::bf16;        // working copy of the parameters
  Dtype grads = Dtype::fp32;          // gradient accumulation
  Dtype master = Dtype::fp32;         // optimizer master weights (sharded under ZeRO-1)
  Dtype moments = Dtype::bf16;        // AdamW first and second moments (sharded)
  Dtype attn_out_cache = Dtype::e5m6; // cached input of the linear after attention (o_proj)
  // With fp8: the MoE dispatch (and combine's backward, which has dispatch's shape) sends FP8 rows
  // with 1 x act_tile scales, cast once on the token side; else BF16 rows, and the experts cast
  // their own inputs. Combine (and dispatch's backward) is BF16 (DeepSeek-V3 §3.3.4).
  bool fp8_dispatch = true;

  Dtype gemm_dtype() const { return fp8 ? Dtype::fp8_e4m3 : Dtype::bf16; }
  std::string describe() const;
};

// What backward recomputes instead of keeping (report §3.2.3 and §3.3.4).
struct RecomputePolicy {
  bool rmsnorm = true;           // RMSNorm outputs recomputed; their inputs are kept
  bool mla_up_projection = true; // q_b/kv_b outputs (per-head q, k, v) recomputed from latents
  bool swiglu = true;            // SwiGLU output recomputed from its cached input
  bool fp8_activation_cache = true;  // linears' inputs cached in FP8 (else BF16)
};

}  // namespace tandem
