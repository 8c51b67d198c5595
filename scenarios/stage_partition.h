// StagePartition: which workload blocks each pipeline stage holds.
//
// Blocks are placed contiguously. The embedding goes with the first transformer layer, the
// output head and the MTP modules stay together after the last layer (MTP shares the head and,
// through DualPipe's mirrored placement, the embedding); so the cut points are the gaps between
// transformer layers and the gap before the head. A manual partition gives the transformer
// layers per stage (the last stage may hold none: head and MTP only).
//
// An automatic partition minimises the largest stage's load, where a block's load is its compute
// time per micro-batch (forward, backward and weight gradients: the calibrated cost model's,
// given as block_seconds) or its training FLOPs as a proxy. scenario_partition (scenario.h)
// refines that for the scenario's schedule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/workload.h"

namespace tandem {

struct Stage {
  size_t first_block = 0;  // index into Workload::blocks
  size_t end_block = 0;    // one past the last
  int64_t layers = 0;      // transformer layers held
  double cost = 0;         // training FLOPs per micro-batch
  double load = 0;         // the balancer's weight: compute seconds per micro-batch (FLOPs without costs)
  double kept_bytes = 0;   // activations kept per micro-batch until backward
  int64_t params = 0;
  int64_t routed_params = 0;
  int64_t fp8_params = 0;
};

struct StagePartition {
  std::vector<Stage> stages;
  bool mirrored = false;       // ranks hold stage pairs (s, S-1-s): DualPipe, DualPipeV
  bool load_in_seconds = false;
  std::string describe(const Workload& w) const;  // one line per stage: blocks, cost, memory
  // Per rank, the load of the stages it holds (mirrored: a pair).
  std::vector<double> rank_loads() const;
  std::string describe_ranks() const;             // one line per rank: stages, load
};

struct StageLayoutOptions {
  std::vector<double> block_seconds;  // per Workload block; empty: training FLOPs
  bool mirrored = false;              // for rank_loads() and describe_ranks()
};

// Largest number of stages the model can be cut into.
int64_t max_stages(const ModelCard& m);

// Throws InputException (naming `file` and `key`) when the partition is impossible.
StagePartition partition_stages(const Workload& w, int64_t stages,
                                const std::vector<int64_t>& manual_layers,
                                const std::string& file, const std::string& key,
                                const StageLayoutOptions& o = {});

}  // namespace tandem
