#include "exec/runtime/budget.h"


namespace tandem::runtime {

CpuEstimate estimate_cpu_cost(const Scenario& s, const Workload& w) {
  CpuEstimate e;
  // Every replica holds the whole model's replicated parameters once (DualPipe twice); FP32
  // weights, gradients (routed experts once per source member), AdamW moments: ~6 copies.
  const double copies = s.schedule.kind == ScheduleKind::dualpipe ? 2.0 : 1.0;
  e.bytes = 6.0 * 4.0 * static_cast<double>(w.params_total()) * copies * static_cast<double>(s.plan.dp);
  // Activations: kept bytes per micro-batch of every block, all micro-batches in flight at worst.
  double kept = 0;
  for (const Block& b : w.blocks) kept += b.kept_bytes();
  e.bytes += kept * 4.0 * static_cast<double>(s.micro_batches()) * static_cast<double>(s.plan.dp);
  e.flops = w.train_flops_per_token() * s.tokens_per_step();
  return e;
}

void check_cpu_budget(const Scenario& s, const Workload& w, const CpuBudget& b) {
  const CpuEstimate e = estimate_cpu_cost(s, w);
  if (e.flops > b.max_flops)
    throw_input_error(s.file, "batch.global_sequences",
                      "too much work for the CPU backend: about " + std::to_string(e.flops / 1e9) +
                          " GFLOP per step (limit " + std::to_string(b.max_flops / 1e9) +
                          " GFLOP); fewer or shorter sequences");
  if (e.bytes > b.max_bytes)
    throw_input_error(s.file, "model",
                      "too large for the CPU backend: about " + std::to_string(static_cast<long long>(e.bytes / 1e6)) +
                          " MB of weights, optimizer state and activations (limit " +
                          std::to_string(static_cast<long long>(b.max_bytes / 1e6)) + " MB); use a smaller model card");
}

}  // namespace tandem::runtime
