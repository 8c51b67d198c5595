#include "exec/runtime/budget.h"

#include <string>

namespace tandem::runtime {

void check_supported(const Scenario& s) {
  const ModelCard& m = s.model;
  auto refuse = [&](const std::string& key, const std::string& reason) {
    fail_scenario_key(s, key, reason + " (the simulator models it; the executor runs DeepSeek-V3's architecture)");
  };
  if (m.qk_rope_head_dim == 0) refuse("model.qk_rope_head_dim", "0 is not supported by the executor: its MLA attention needs a RoPE part");
  if (m.n_routed_experts > 0) {
    if (m.scoring_func != "sigmoid")
      refuse("model.scoring_func", "'" + m.scoring_func + "' is not supported by the executor (sigmoid only)");
    if (m.topk_method != "noaux_tc" && m.topk_method != "greedy")
      refuse("model.topk_method", "'" + m.topk_method + "' is not supported by the executor (noaux_tc or greedy)");
  }
  if (m.tie_word_embeddings) refuse("model.tie_word_embeddings", "tied embeddings are not supported by the executor");
  if (m.num_nextn_predict_layers > 1)
    refuse("model.num_nextn_predict_layers", "the executor runs one MTP module (depth 1) at most");
  // The executor reduces every stage's gradients at the end of the step; the per-stage
  // reduce-scatters of plan.dp_overlap are modelled by the simulator only (for now).
  if (s.plan.dp_overlap)
    fail_scenario_key(s, "plan.dp_overlap", "the executor runs ZeRO-1 at the end of the step; dp_overlap is simulated only");
}

CpuEstimate estimate_cpu_cost(const Scenario& s, const Workload& w) {
  CpuEstimate e;
  // Every replica holds the whole model's replicated parameters once (DualPipe twice); FP32
  // weights, gradients (routed experts once per source member), AdamW moments: ~6 copies.
  const double copies = static_cast<double>(schedule_traits(s.schedule.kind).stage_copies());
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
  const double copies = static_cast<double>(schedule_traits(s.schedule.kind).stage_copies());
  return 4.0 * static_cast<double>(w.params_total()) * copies * static_cast<double>(s.plan.dp);
}

std::string megabytes(double bytes) { return std::to_string(static_cast<long long>(bytes / 1e6)) + " MB"; }
}  // namespace

void check_cpu_budget(const Scenario& s, const Workload& w, const CpuBudget& b) {
  const CpuEstimate e = estimate_cpu_cost(s, w);
  if (e.flops > b.max_flops)
    fail_scenario_key(s, "batch.global_sequences",
                      "too much work for the CPU backend: about " + std::to_string(e.flops / 1e9) +
                          " GFLOP per step (limit " + std::to_string(b.max_flops / 1e9) +
                          " GFLOP); fewer or shorter sequences");
  if (e.bytes > b.max_bytes)
    fail_scenario_key(s, "model",
                      "too large for the CPU backend: about " + std::to_string(static_cast<long long>(e.bytes / 1e6)) +
                          " MB of weights, optimizer state and activations (limit " +
                          std::to_string(static_cast<long long>(b.max_bytes / 1e6)) + " MB); use a smaller model card");
}

void check_gpu_budget(const Scenario& s, const Workload& w, const GpuBudget& b) {
  const double host = host_weight_bytes(s, w);
  if (host > b.max_host_bytes)
    fail_scenario_key(s, "model",
                      "too large for the CUDA backend: its ranks' host copies of the weights take about " +
                          megabytes(host) + " (limit " + megabytes(b.max_host_bytes) + "); use a smaller model card");
  const double per_device = estimate_cpu_cost(s, w).bytes / static_cast<double>(b.devices > 0 ? b.devices : 1);
  const double limit = b.usable * b.device_bytes;
  if (per_device > limit)
    fail_scenario_key(s, "model",
                      "too large for the GPU: about " + megabytes(per_device) +
                          " of weights, gradients, optimizer state and activations per device (" +
                          std::to_string(b.devices) + " device(s), " + megabytes(limit) +
                          " usable on each); use a smaller model card or fewer sequences");
}

}  // namespace tandem::runtime
