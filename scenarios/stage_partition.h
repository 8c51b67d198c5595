// StagePartition: which workload blocks each pipeline stage holds.
//
// Blocks are placed contiguously. The embedding goes with the first transformer layer, the
// output head and the MTP modules stay together after the last layer (MTP shares the head and,
// through DualPipe's mirrored placement, the embedding); so the cut points are the gaps between
// transformer layers and the gap before the head. Automatic partitions minimise the largest
// stage's cost (training FLOPs of its blocks, a proxy for compute time); a manual partition
// gives the transformer layers per stage (the last stage may hold none: head and MTP only).
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
  double kept_bytes = 0;   // activations kept per micro-batch until backward
  int64_t params = 0;
  int64_t routed_params = 0;
  int64_t fp8_params = 0;
};

struct StagePartition {
  std::vector<Stage> stages;
  std::string describe(const Workload& w) const;  // one line per stage: blocks, cost, memory
};

// Largest number of stages the model can be cut into.
int64_t max_stages(const ModelCard& m);

// Throws InputException (naming `file` and `key`) when the partition is impossible.
StagePartition partition_stages(const Workload& w, int64_t stages,
                                const std::vector<int64_t>& manual_layers,
                                const std::string& file, const std::string& key);

}  // namespace tandem
