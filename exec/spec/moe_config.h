// MoeConfig: one MoE layer on one EP member — router, expert layout over the EP group, widths,
// GEMM numerics and the four transfers' wires. One definition for the CPU reference
// (exec/ops/moe_layer/moe_layer.h) and the CUDA layer (exec/ops/moe_layer/moe_layer_cuda.h).
#pragma once

#include "exec/spec/numerics.h"
#include "exec/spec/router_config.h"

namespace tandem::spec {

// n_routed experts over `ep` members in contiguous blocks.
struct EpLayout {
  int n_routed = 0;
  int ep = 1;

  EpLayout() = default;
  EpLayout(int n_routed_experts, int ep_size);  // std::invalid_argument unless ep > 0 divides E
  int experts_per_rank() const { return n_routed / ep; }
  int owner(int expert) const { return expert / experts_per_rank(); }
  int first_expert(int rank) const { return rank * experts_per_rank(); }
};

struct MoeConfig {
  RouterConfig router;
  EpLayout ep;
  int hidden = 0;
  int moe_inter = 0;  // width of one routed expert
  int n_shared = 0;   // shared experts, fused into one FFN of width n_shared · moe_inter
  Numerics numerics = Numerics::exact;  // the experts' GEMMs (the router is always exact)
  int align = kSegmentAlign;            // expert segments padded to a multiple of this
  Wire dispatch_wire = Wire::exact;       // x to the experts            (DeepSeek-V3: fp8)
  Wire combine_wire = Wire::exact;        // y back to the tokens        (DeepSeek-V3: bf16)
  Wire combine_grad_wire = Wire::exact;   // g·dout to the experts       (DeepSeek-V3: fp8)
  Wire dispatch_grad_wire = Wire::exact;  // dx back to the tokens       (DeepSeek-V3: bf16)

  int experts_per_rank() const { return ep.experts_per_rank(); }
  // From a model card (RouterConfig::from_card), ep members, expert numerics; exact wires.
  static MoeConfig from_card(const ModelCard& card, int ep, Numerics numerics = Numerics::exact);
  // DeepSeek-V3's wire formats (§5.1): FP8 dispatch-shaped, BF16 combine-shaped transfers.
  void use_deepseek_wires();
  // The router's rules, ep dividing n_routed, positive widths and align; std::invalid_argument
  // naming the field.
  void validate() const;
};

}  // namespace tandem::spec
