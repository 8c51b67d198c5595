// TaskWork: what one Program task does, from the workload — the same for both engines.
//
// Compute tasks gather the passes of the workload ops of their block and part:
//   attn_f / mlp_f: forward of the block's attention-part / mlp-part ops;
//   attn_b / mlp_b: backward-for-input plus what backward recomputes (the loss's backward is in
//                   the head's mlp_b);
//   attn_w / mlp_w: backward-for-weights; loss: the loss op's forward.
// Communication tasks carry bytes sent by this GPU:
//   dispatch_f: tokens to their experts' nodes, dispatch-shaped (FP8 + scales);
//   combine_f:  expert outputs back, combine-shaped (BF16);
//   combine_b:  the gradient of combine, dispatch-shaped; dispatch_b: the gradient of dispatch,
//               combine-shaped (reference §5.1);
//   pp_send / pp_recv: one stage boundary's activations or gradients (BF16, tokens x hidden);
//   dp_reduce_scatter: the rank's FP32 gradients; dp_all_gather: its BF16 parameters.
//   optimizer: AdamW over the rank's shard of the parameters (memory-bound).
#pragma once

#include "models/workload.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"

namespace tandem {

struct TaskWork {
  PassCost compute;      // compute tasks; comm tasks: kernels they run on the comm stream first
  PassCost routed;       // the part of `compute` that scales with the GPU's routed-expert rows
  bool backward = false; // selects the attention backward efficiency
  // Communication: bytes this GPU sends over IB (to other nodes) and NVLink (inside its node);
  // pp/dp transfers are not split here (the route decides).
  double ib_bytes = 0, nvlink_bytes = 0, bytes = 0;
  // All-to-alls: tokens this GPU sends and bytes per token copy (dispatch- or combine-shaped);
  // the block's RoutingPattern says where the copies go.
  double tokens = 0, bytes_per_copy = 0;

  // What a trace event of the task records, the same in both engines so traces compare by
  // rate: the FLOPs of its kernels; the bytes a compute task moves through HBM, or those a
  // communication task sends.
  double trace_flops() const { return compute.flops(); }
  double trace_bytes(Stream stream) const { return stream == Stream::comm ? bytes : compute.bytes(); }
};

TaskWork task_work(const Scenario& s, const Workload& w, const Program& p, int rank, const Task& t);

}  // namespace tandem
