#include "scenarios/task_cost.h"

#include <algorithm>

#include "common/signed_index.h"

namespace tandem {

int64_t comm_stream_sms(const Scenario& s) {
  return s.gemm_sms() < s.cluster.gpu.sms ? std::max<int64_t>(1, s.comm.sms) : 0;
}

bool a2a_kind(TaskKind k, A2AKind* out) {
  switch (k) {
    case TaskKind::dispatch_f: *out = A2AKind::dispatch_f; return true;
    case TaskKind::dispatch_b: *out = A2AKind::dispatch_b; return true;
    case TaskKind::combine_f: *out = A2AKind::combine_f; return true;
    case TaskKind::combine_b: *out = A2AKind::combine_b; return true;
    case TaskKind::attn_f:
    case TaskKind::attn_b:
    case TaskKind::attn_w:
    case TaskKind::mlp_f:
    case TaskKind::mlp_b:
    case TaskKind::mlp_w:
    case TaskKind::loss:
    case TaskKind::pp_send:
    case TaskKind::pp_recv:
    case TaskKind::dp_reduce_scatter:
    case TaskKind::dp_all_gather:
    case TaskKind::optimizer: return false;
  }
  return false;
}

bool in_overlapped_slot(const Program& p, int rank, const Task& t) {
  if (t.slot < 0) return false;
  const auto& slots = p.schedule.slots[idx(rank)];
  return idx(t.slot) < slots.size() && slots[idx(t.slot)].kind == SlotKind::FB;
}

TaskCost task_cost(const Scenario& s, const Program& p, int rank, const Task& t, const TaskWork& work,
                   const ComputeCostModel& costs) {
  TaskCost c;
  const int64_t sms = s.gemm_sms();
  if (t.stream == Stream::compute) {
    c.seconds = costs.pass_seconds(work.compute, work.backward, sms);
    // Linear in the rows: at DeepSeek-V3's expert GEMM sizes (thousands of rows per expert)
    // the kernel efficiency hardly changes with the row count.
    c.routed_seconds = costs.pass_seconds(work.routed, work.backward, sms);
    const auto& scales = costs.calibration().task_time_scale;
    if (auto it = scales.find(to_string(t.kind)); it != scales.end()) {
      c.seconds *= it->second;
      c.routed_seconds *= it->second;
    }
    return c;
  }
  // A comm task's own kernels (e.g. a cast to the wire format) run on the communication SMs.
  c.seconds = costs.pass_seconds(work.compute, false, sms, comm_stream_sms(s));
  A2AKind kind;
  if (!a2a_kind(t.kind, &kind)) return c;
  const AllToAllCalibration& a = costs.calibration().all_to_all;
  const size_t k = idx(kind);
  const double comm_sms = static_cast<double>(std::max<int64_t>(1, s.comm.sms));
  const double saturating = static_cast<double>(a.saturating_sms);
  c.transfer_scale = std::max(1.0, saturating / comm_sms);
  // In an overlapped F&B slot the in-training figures apply (notify kernels that also wait for
  // the EP group's slowest member, transfers slowed by the GEMMs beside them); a lone F or B
  // slot runs the all-to-all as DeepEP's own benchmark does (its timing includes its notify).
  if (in_overlapped_slot(p, rank, t)) {
    c.seconds += std::max(0.0, a.notify_us[k]) * 1e-6;
    if (a.in_training_factor[k] > 0) c.transfer_scale *= a.in_training_factor[k];
  }
  return c;
}

}  // namespace tandem
