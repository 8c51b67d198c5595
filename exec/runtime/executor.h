// What every backend's executor takes and returns: the options of a run, each step's statistics,
// the result, and ExecFailure (a failed rank stops the whole job; the message names the rank and
// the task). The executors: exec/backends/cpu/cpu_executor.h, exec/backends/cuda/cuda_executor.h.
#pragma once

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/trace.h"
#include "exec/comm/communicator.h"
#include "exec/runtime/run_spec.h"

namespace tandem::runtime {

struct ExecOptions {
  int steps = 1;
  nn::Numerics numerics = nn::Numerics::exact;
  bool check_reference = false;
  double lr = 1e-3;
  uint64_t seed = 1;
  std::chrono::milliseconds timeout{60'000};
  std::optional<comm::FaultInjection> fault;
  bool trace = false;  // fill ExecResult::trace with step 1's task timings
};

struct StepStats {
  double loss = 0;          // cross-entropy (the main model's LM loss)
  // MTP: λ/D · Σ_k CE_k over the global batch (0 without MTP modules). Trained: loss + mtp_loss
  // (+ balance_loss).
  double mtp_loss = 0;
  // Sequence-wise balance loss: α Σ_i f_i P_i per sequence, averaged over the global batch's
  // sequences, summed over the MoE layers (0 when off). The trained objective is loss + this.
  double balance_loss = 0;
  double wall_s = 0;
  double tokens_per_s = 0;
  // Max/mean expert load of the step per MoE layer (model order), over the whole global batch,
  // with the selection bias the step ran with (the update follows the step).
  std::vector<int64_t> moe_layers;
  std::vector<double> load_max_over_mean;
  double worst_load() const;  // max over the layers (0 without MoE layers)
};

struct ExecResult {
  std::string world;        // e.g. "in-process, 8 ranks"
  bool leader = true;       // this process hosts world rank 0 (it prints the result)
  std::vector<StepStats> steps;
  std::optional<double> max_grad_rel_err;  // step 1 vs the reference
  std::optional<bool> losses_match;        // bit-identical losses vs the reference
  Trace trace;
};

class ExecFailure : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace tandem::runtime
