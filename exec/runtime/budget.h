// What the executor agrees to run: a scenario whose step would take hours or exhaust memory is
// refused up front (InputException naming the key to change), not discovered by the OOM killer or
// by CUDA's out-of-memory error halfway through building the ranks.
#pragma once

#include "scenarios/scenario.h"

namespace tandem::runtime {

// The model features and plan settings the executor implements; anything else is refused here,
// as one InputError naming the scenario's key, before a rank is built. It runs: MLA attention
// with a RoPE part (qk_rope_head_dim > 0), DeepSeek-V3's router (sigmoid scores, top-k by
// noaux_tc groups or greedy), untied embeddings, at most one MTP module, ZeRO-1 at the end of
// the step (no plan.dp_overlap). The simulator models more (V2's softmax router, for one).
void check_supported(const Scenario& s);

struct CpuBudget {
  double max_bytes = 4e9;    // parameters, gradients, optimizer state and activations, all ranks
  double max_flops = 1e12;   // training FLOPs of one step
};

struct CpuEstimate {
  double bytes = 0, flops = 0;
};

CpuEstimate estimate_cpu_cost(const Scenario& s, const Workload& w);
// Throws InputException (file = the scenario, key = "model" or "batch.global_sequences").
void check_cpu_budget(const Scenario& s, const Workload& w, const CpuBudget& b = {});

// The CUDA backend: the same estimate, with the job's ranks spread over `devices` GPUs of
// `device_bytes` each (virtual ranks: all on one), of which it may use `usable` (the rest is
// CUDA's context, cuBLAS workspaces, NCCL buffers); and the host copy of each rank's block
// parameters (one FP32 copy of the weights, the starting values and the blocks' shapes) within
// CpuBudget::max_bytes. Throws InputException (key = "model").
struct GpuBudget {
  double device_bytes = 0;
  int devices = 1;
  double usable = 0.85;
  double max_host_bytes = CpuBudget{}.max_bytes;
};
void check_gpu_budget(const Scenario& s, const Workload& w, const GpuBudget& b);

}  // namespace tandem::runtime
