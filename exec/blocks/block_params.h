// The parameters of one workload block (embedding, dense or MoE layer, head) as one rank holds
// them, their gradient accumulators, and a fixed-order walk over both with Hugging Face names.
//
// A MoE layer's routed experts are the EP member's E/ep local experts; their gradients are kept
// per SOURCE member of the EP group (experts_by_src[src][local expert]): each source's rows add to
// their own accumulator, so the step's sum can be taken in the canonical order (sources in group
// order) whatever the schedule (see gradient_sync.h). Everything else is replicated and its
// gradient is the rank's own tokens' contribution.
//
// Weights are seeded by their global identity (model_weights.h, exec/ops/moe_layer init_moe_weights),
// so a block built on any rank, at any ep, starts identical to the single-rank reference.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "exec/ops/moe_layer/moe_layer.h"
#include "exec/blocks/model_weights.h"
#include "models/workload.h"

namespace tandem::runtime {

using nn::Mat;
using nn::Vec;

struct BlockParams {
  BlockKind kind = BlockKind::dense_layer;
  int64_t layer = -1;
  Mat<float> embed;                              // embedding: [vocab, hidden]
  std::optional<nn::LayerWeights<float>> layer_w;  // layers: norms, MLA, dense FFN
  std::optional<moe::MoeWeights<float>> moe;       // MoE layers: router, local experts, shared
  Vec<float> norm;                               // head: final norm; MTP: shared_head.norm
  Mat<float> lm_head;                            // head: [vocab, hidden]
  // MTP module (kind mtp, layer = num_hidden_layers + depth): its input projection (enorm, hnorm,
  // eh_proj); its copy of the embedding table (equal to stage 0's at step start, refreshed after
  // every step; not a parameter of its own: not walked by for_each_dense); the shared output head
  // (the same stage's head block's lm_head, set by the owner of both blocks).
  std::optional<nn::MtpProjWeights<float>> mtp;
  Mat<float> mtp_embed;
  const Mat<float>* shared_lm_head = nullptr;
};

struct BlockGrads {
  BlockParams dense;  // same shapes as the params, zero; dense.moe->experts empty (by source below)
  std::vector<std::vector<nn::FfnWeights<float>>> experts_by_src;  // [src member][local expert]
  // MTP blocks: the module's contributions to the shared embedding and output head (not walked;
  // folded into the embedding's / head's gradients at the end of the step, in a fixed order).
  Mat<float> mtp_embed, mtp_lm_head;
};

struct ModelSetup {
  ModelCard card;
  nn::MlaConfig mla;
  moe::MoeConfig moe;  // ep and numerics of this run (ep = 1 for the reference)
  nn::Numerics numerics = nn::Numerics::exact;
  uint64_t seed = 0;
  // Tests only: added to the initial router selection bias of experts [0, n_routed/4) of every
  // MoE layer (a skewed start for the aux-loss-free balancing to undo). 0 = the normal init.
  double router_bias_skew = 0;
};

ModelSetup make_setup(const ModelCard& card, int ep, nn::Numerics numerics, uint64_t seed);

// Params of a block for EP member `member`.
BlockParams make_block_params(const ModelSetup& s, const Block& b, int member);
// Zero gradients of the same shapes, with `sources` per-source expert accumulators.
BlockGrads make_block_grads(const ModelSetup& s, const BlockParams& p, int sources);

// Points every MTP block's shared_lm_head at the head block among `blocks` (the last stage holds both).
void link_shared_head(std::vector<BlockParams>& blocks);

// Every replicated ("dense") tensor of the block, in a fixed order: f(name, span).
void for_each_dense(BlockParams& p, const std::function<void(const std::string&, std::span<float>)>& f);
// Every local routed-expert tensor, experts in order: f(name with the GLOBAL expert id, span).
void for_each_expert(const ModelSetup& s, int64_t layer, int first_expert,
                     std::vector<nn::FfnWeights<float>>& experts,
                     const std::function<void(const std::string&, std::span<float>)>& f);

}  // namespace tandem::runtime
