// The sequential reference step: one thread, no communicator, ep = 1 (every expert local).
//
// For each replica, micro-batches in order, the whole model runs forward then backward with the
// same block functions as the ranks (block_ops.h); the weight passes accumulate in place into one
// accumulator per (replica, path, stage). The step's gradient is then summed in the executor's
// canonical order (rank_runner.h): replicated parameters per replica path 0 + path 1, replicas in
// order; routed experts per EP group: sources in group order (path 0, then path 1), groups in
// order. The result is laid out exactly as the ranks flatten their stages, so a rank's reduced
// shard compares element by element.
#pragma once

#include <vector>

#include "exec/runtime/run_spec.h"

namespace tandem::runtime {

struct ReferenceStep {
  std::vector<std::vector<double>> loss;            // [replica][micro-batch]
  std::vector<std::vector<double>> mtp_loss;        // [replica][micro-batch], Σ over MTP depths
  std::vector<std::vector<double>> balance_loss;    // [replica][micro-batch], Σ over MoE blocks in order
  std::vector<std::vector<float>> dense;            // [stage] replicated parameters' gradient
  std::vector<std::vector<std::vector<float>>> experts;  // [stage][EP member] routed experts' gradient
};

// The gradient of the step at the initial (seeded) parameters.
ReferenceStep run_reference(const RunSpec& spec);

}  // namespace tandem::runtime
