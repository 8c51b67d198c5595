// Schedule: which pipeline chunk each rank runs in which order — the slot level of a Program.
//
// A micro-batch travels a *path* of stages (one path for 1F1B, ZB1P and DualPipeV, two opposite
// paths for DualPipe). A chunk is (path, micro-batch, stage). Each rank runs an ordered list of
// slots: a forward (F), a full backward (B), a backward with its weight gradients deferred (B_input:
// input gradients only), a deferred weight-gradient pass (W, oldest first), or an overlapped
// forward-and-backward pair (FB) of two different micro-batches.
//
// Each slot's outputs (activations to the next stage, gradients to the previous one) are sent at
// the end of a slot: normally its own, later for outputs DualPipe holds back (middle ranks, and
// step 2 of the other ranks). Both engines run exactly these slots in this order.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tandem {

enum class ScheduleKind;  // schedule_table.h

enum class SlotKind { F, B, B_input, W, FB };
const char* to_string(SlotKind k);

struct Chunk {
  int path = 0;
  int micro_batch = 0;  // global id: path * per_path + index within the path
  int stage = 0;        // stage along the path
  int phase = 0;        // the rank's phase (DualPipe, DualPipeV: 0 = early stage, 1 = late)
  bool valid() const { return micro_batch >= 0; }
};

struct Slot {
  SlotKind kind = SlotKind::F;
  Chunk f;  // F, FB: the forward chunk
  Chunk b;  // B, B_input, FB: the backward chunk; W: the chunk whose weight gradients run
  int f_release = -1;  // slot index after which f's output is sent (-1: none to send)
  int b_release = -1;  // slot index after which b's input gradient is sent (-1: none)
};

// One activation or gradient crossing ranks (or handed over inside a rank at a DualPipeV turn).
struct Message {
  int id = 0;
  bool gradient = false;
  Chunk chunk;          // the producing chunk
  int from_rank = 0, from_slot = 0;  // sent at the end of this slot
  int to_rank = 0, to_slot = 0;      // needed by this slot
};

struct Schedule {
  ScheduleKind kind{};
  int ranks = 0;
  int stages = 0;            // stages along a path
  int paths = 1;
  int micro_batches = 0;     // per step, all paths together
  std::vector<std::vector<Slot>> slots;  // per rank, in order
  std::vector<Message> messages;

  int per_path() const { return micro_batches / paths; }
  int rank_of(int path, int stage) const;  // which rank runs a stage of a path
  bool needs_input(const Chunk& c) const { return c.stage > 0; }
  bool needs_gradient(const Chunk& c) const { return c.stage < stages - 1; }
  std::string op_list(int rank) const;  // "F0 F0 F1 B1* W (F0&B1) ..." as the reference writes it
};

// Builds the schedule with the kind's generator and placement (schedule_table.h). Throws
// InputException naming `file` and `key` (plan.pp for a rule on the ranks) when the schedule's
// own rules do not hold.
Schedule make_schedule(ScheduleKind kind, int ranks, int micro_batches, const std::string& file = "",
                       const std::string& key = "schedule.kind");

// Slots per rank by kind, to check generated schedules against the reference's per-rank counts
// (deepseek-v3.md §4.4, §15: ScheduleTraits::expected_counts).
struct SlotCounts {
  int forwards = 0, backwards = 0, deferred = 0, weights = 0, overlapped = 0;
  int lone_forwards = 0, lone_backwards = 0;  // F and B/B_input outside overlapped slots
};
SlotCounts count_slots(const std::vector<Slot>& slots);

}  // namespace tandem
