#include "scenarios/task_work.h"

#include <cmath>
#include <stdexcept>

#include "common/signed_index.h"
#include "scenarios/memory.h"

namespace tandem {

namespace {

bool in_part(const Op& op, TaskKind k) {
  const bool attention = k == TaskKind::attn_f || k == TaskKind::attn_b || k == TaskKind::attn_w;
  if (op.kind == OpKind::loss) return k == TaskKind::loss || k == TaskKind::mlp_b;
  if (k == TaskKind::loss) return false;  // the loss task runs the loss alone (the head is mlp_f's)
  return attention ? op.part == Part::attention : op.part == Part::mlp;
}

// Parameters of one stage on one GPU: routed experts sharded over the EP group.
double stage_params(const Scenario& s, const Program& p, int st) {
  const Stage& stage = p.partition.stages[idx(st)];
  return static_cast<double>(stage.params - stage.routed_params) +
         static_cast<double>(stage.routed_params) / static_cast<double>(s.plan.ep);
}

double rank_params(const Scenario& s, const Program& p, int rank) {
  double params = 0;
  for (int st : p.rank_stages[idx(rank)]) params += stage_params(s, p, st);
  return params;
}

}  // namespace

TaskWork task_work(const Scenario& s, const Workload& w, const Program& p, int rank, const Task& t) {
  TaskWork out;
  const double tokens = static_cast<double>(s.micro_batch().tokens());
  const double hidden = static_cast<double>(s.model.hidden_size);
  switch (t.kind) {
    case TaskKind::attn_f:
    case TaskKind::mlp_f:
    case TaskKind::loss:
    case TaskKind::attn_b:
    case TaskKind::mlp_b:
    case TaskKind::attn_w:
    case TaskKind::mlp_w: {
      const Block& b = w.blocks[idx(t.block)];
      for (const Op& op : b.ops) {
        if (!in_part(op, t.kind)) continue;
        PassCost pass;
        switch (t.kind) {
          case TaskKind::attn_f:
          case TaskKind::mlp_f:
          case TaskKind::loss: pass = op.fwd; break;
          case TaskKind::attn_b:
          case TaskKind::mlp_b:
            pass = op.bwd_input;
            pass += op.recompute;
            out.backward = true;
            break;
          case TaskKind::attn_w:
          case TaskKind::mlp_w: pass = op.bwd_weight; break;
          case TaskKind::dispatch_f:
          case TaskKind::dispatch_b:
          case TaskKind::combine_f:
          case TaskKind::combine_b:
          case TaskKind::pp_send:
          case TaskKind::pp_recv:
          case TaskKind::dp_reduce_scatter:
          case TaskKind::dp_all_gather:
          case TaskKind::optimizer: throw std::logic_error("task_work: not a compute task");
        }
        out.compute += pass;
        if (op.per_routed_row) out.routed += pass;
      }
      break;
    }
    case TaskKind::dispatch_f:
    case TaskKind::combine_b:
    case TaskKind::combine_f:
    case TaskKind::dispatch_b: {
      const AllToAll& a = w.blocks[idx(t.block)].all_to_all;
      const bool dispatch_shaped = t.kind == TaskKind::dispatch_f || t.kind == TaskKind::combine_b;
      out.ib_bytes = dispatch_shaped ? a.dispatch_ib_bytes() : a.combine_ib_bytes();
      out.nvlink_bytes = dispatch_shaped ? a.dispatch_nvlink_bytes() : a.combine_nvlink_bytes();
      out.bytes = out.ib_bytes + out.nvlink_bytes;
      out.tokens = a.tokens;
      out.bytes_per_copy = dispatch_shaped ? a.dispatch_bytes_per_copy : a.combine_bytes_per_copy;
      // The MoE layer's output gradient is cast to the FP8 wire format on the comm stream before
      // combine's backward sends it (the shared experts' dgrad reuses that copy).
      if (t.kind == TaskKind::combine_b && s.precision.fp8 && s.precision.fp8_dispatch) {
        const double tile = static_cast<double>(s.precision.act_tile);
        out.compute.add("combine_b.quantize_grad", KernelFamily::cast,
                        tokens * hidden * 2.0 + tokens * hidden + tokens * std::ceil(hidden / tile) * 4.0);
      }
      break;
    }
    case TaskKind::pp_send:
    case TaskKind::pp_recv: out.bytes = tokens * hidden * 2.0; break;
    case TaskKind::dp_reduce_scatter: {
      // One stage's gradients (dp_overlap), or all the rank's.
      const double params = t.chunk.stage >= 0 ? stage_params(s, p, t.chunk.stage) : rank_params(s, p, rank);
      out.bytes = params * bytes_per_element(s.precision.grads);
      break;
    }
    case TaskKind::dp_all_gather: out.bytes = rank_params(s, p, rank) * bytes_per_element(s.precision.weights); break;
    case TaskKind::optimizer: {
      // Per local shard parameter: read gradient, master and both moments; write master, moments
      // and the working BF16 weight.
      const double copies = static_cast<double>(s.plan.dp * schedule_traits(s.schedule.kind).stage_copies());
      const double shard = rank_params(s, p, rank) / copies;
      const double per = bytes_per_element(s.precision.grads) + 2 * bytes_per_element(s.precision.master) +
                         4 * bytes_per_element(s.precision.moments) + bytes_per_element(s.precision.weights);
      out.compute.add("adamw", KernelFamily::optimizer, shard * per, shard * 12.0);
      break;
    }
  }
  return out;
}

}  // namespace tandem
