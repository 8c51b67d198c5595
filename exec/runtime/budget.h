// What the CPU backend agrees to run: a scenario whose step would take hours or exhaust memory is
// refused up front (InputException naming the key to change), not discovered by the OOM killer.
#pragma once

#include "scenarios/scenario.h"

namespace tandem::runtime {

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

}  // namespace tandem::runtime
