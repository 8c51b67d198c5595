// The schedule generators: per rank, the ordered slots with their phases and send points.
// Chunk identities (path, stage, micro-batch) are filled in afterwards by make_schedule.
#pragma once

#include <vector>

#include "scenarios/schedules/schedule.h"

namespace tandem {

// 1F1B: stage r runs min(p-r-1, m) warm-up forwards, then alternates F and B, then drains B.
std::vector<std::vector<Slot>> generate_1f1b(int ranks, int micro_batches);

// ZB1P (zero-bubble "H1"): the 1F1B order of F and input-gradient backward (B*), with the weight
// passes (W) deferred: stage r keeps up to r of them pending (so no stage holds more than the
// p micro-batches 1F1B's first stage holds), runs one after each B* beyond that, and drains them
// while the cool-down waits for gradients.
std::vector<std::vector<Slot>> generate_zb1p(int ranks, int micro_batches);

// DualPipe on `ranks` (even) with `per_direction` micro-batches per direction: the eight steps of
// the reference implementation, with its middle-rank special case (deepseek-v3.md §4.4).
std::vector<std::vector<Slot>> generate_dualpipe(int ranks, int per_direction);

}  // namespace tandem
