// Memory per GPU: what each pipeline rank holds at its peak.
//
// weights: working copy (BF16) of every parameter on the rank plus, under the FP8 recipe, the
//          per-step FP8 copy of the parameters FP8 GEMMs read (1 byte + a 128x128 block scale);
// grads:   FP32 gradient accumulation for every parameter on the rank (ZeRO-1 shards none);
// optimizer: FP32 master weights and BF16 AdamW moments, sharded over the copies of each
//          parameter (data-parallel replicas x pipeline copies; routed experts over dp*copies/ep);
// activations: in-flight micro-batches x bytes kept per micro-batch of each stage. Which stages
//          a rank holds and the in-flight counts are the schedule's (schedule_table.h).
// Communication buffers and the CUDA context are not counted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scenarios/scenario.h"
#include "scenarios/stage_partition.h"

namespace tandem {

struct RankMemory {
  int64_t rank = 0;
  std::vector<int64_t> stages;        // stages held (two under DualPipe / DualPipeV)
  std::vector<int64_t> in_flight;     // peak micro-batches in flight per held stage
  int64_t params = 0;                 // parameters held on this GPU
  double weights = 0, grads = 0, optimizer = 0, activations = 0;
  double total() const { return weights + grads + optimizer + activations; }
};

std::vector<RankMemory> memory_per_rank(const Scenario& s, const StagePartition& p);

}  // namespace tandem
