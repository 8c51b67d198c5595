// RunSpec: what every rank of one executor job shares — the scenario, its Program, the model
// setup, placement and the data — plus the placement arithmetic (the simulator's):
//   world rank g = pipeline_rank · dp + replica
//   EP group of a rank  = the ep consecutive replicas containing it (same pipeline rank)
//   DP group            = every replica of the pipeline rank (replicated parameters)
//   expert-DP group     = the replicas holding the same experts: member m of every EP group
#pragma once

#include <cstdint>
#include <vector>

#include "exec/ops/adamw/adamw.h"
#include "exec/blocks/block_ops.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"

namespace tandem::runtime {

struct RunSpec {
  Scenario scenario;
  Workload workload;
  StagePartition partition;
  Program program;
  ModelSetup setup;  // ep = plan.ep
  int pp = 1, dp = 1, ep = 1;
  int micro_batches = 0;     // per replica per step
  int64_t seq_len = 0, sequences_per_mb = 0;
  double loss_scale = 1;     // 1 / tokens in the global batch
  uint64_t data_seed = 1;
  nn::AdamWConfig adam;
  // Aux-loss-free balancing (deepseek-v3.md §8): after each step every MoE layer's selection bias
  // moves by gamma · sign(mean − c_e), c_e = the step's rows routed to expert e summed over every
  // rank holding the layer (DP replicas and DualPipe's two copies; integers, so the sum is exact).
  // 0 disables the update. DeepSeek-V3 uses 0.001 for most of pre-training.
  double bias_update_speed = 0.001;
  // Sequence-wise balance loss α (deepseek-v3.md §1.1; exec/ops/balance/balance.h) in every MoE block,
  // averaged over the global batch's sequences; 0 disables it.
  double balance_loss_alpha = 1e-4;
  // MTP loss weight λ (deepseek-v3.md §1: 0.3 early in training, 0.1 later); the MTP loss is
  // λ / D · Σ_k CE_k, each CE_k averaged over the global batch's tokens (ignored rows count as 0).
  double mtp_lambda = 0.3;

  int world_size() const { return pp * dp; }
  int world_rank(int pipeline_rank, int replica) const { return pipeline_rank * dp + replica; }
  int pipeline_rank_of(int g) const { return g / dp; }
  int replica_of(int g) const { return g % dp; }
  int member_of(int replica) const { return replica % ep; }
  std::vector<int> ep_group(int g) const;
  std::vector<int> dp_group(int g) const;
  std::vector<int> expert_dp_group(int g) const;
  int64_t tokens_per_mb() const { return seq_len * sequences_per_mb; }
  // The block context of EP member `member` (the reference: member 0 of its ep = 1 setup).
  BlockContext block_context(const ModelSetup& s, int member) const;
};

// Builds the Program and the model setup of a loaded scenario; first refuses what the executor
// does not run (check_supported: InputException naming the key).
RunSpec make_run_spec(const Scenario& s, nn::Numerics numerics, double lr, uint64_t seed);

// Seeded synthetic token ids of (replica, micro-batch): sequences of seq_len + 1 ids; inputs are
// the first seq_len, targets the last seq_len (the next token).
MicroBatchData synthetic_batch(const RunSpec& spec, int replica, int micro_batch);

}  // namespace tandem::runtime
