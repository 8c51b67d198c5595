#include "exec/runtime/budget.h"

#include <string>

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

namespace {
// The FP32 weights every rank keeps on the host as make_block_params builds them: one of the
// estimate's six copies of the parameters.
double host_weight_bytes(const Scenario& s, const Workload& w) {
  const double copies = s.schedule.kind == ScheduleKind::dualpipe ? 2.0 : 1.0;
  return 4.0 * static_cast<double>(w.params_total()) * copies * static_cast<double>(s.plan.dp);
}

std::string megabytes(double bytes) { return std::to_string(static_cast<long long>(bytes / 1e6)) + " MB"; }
}  // namespace

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

void check_gpu_budget(const Scenario& s, const Workload& w, const GpuBudget& b) {
  const double host = host_weight_bytes(s, w);
  if (host > b.max_host_bytes)
    throw_input_error(s.file, "model",
                      "too large for the CUDA backend: its ranks' host copies of the weights take about " +
                          megabytes(host) + " (limit " + megabytes(b.max_host_bytes) + "); use a smaller model card");
  const double per_device = estimate_cpu_cost(s, w).bytes / static_cast<double>(b.devices > 0 ? b.devices : 1);
  const double limit = b.usable * b.device_bytes;
  if (per_device > limit)
    throw_input_error(s.file, "model",
                      "too large for the GPU: about " + megabytes(per_device) +
                          " of weights, gradients, optimizer state and activations per device (" +
                          std::to_string(b.devices) + " device(s), " + megabytes(limit) +
                          " usable on each); use a smaller model card or fewer sequences");
}

}  // namespace tandem::runtime
