#include "scenarios/schedules/schedule_table.h"

#include <algorithm>
#include <stdexcept>

#include "common/signed_index.h"
#include "scenarios/schedules/generators.h"

namespace tandem {

namespace {

// 1F1B and ZB1P: one path, rank r runs stage r.
std::vector<StageOnPath> one_stage_per_rank(int, int rank) { return {{0, rank}}; }
int rank_is_stage(int, int, int stage) { return stage; }
// Stage r holds the micro-batches it started while the later stages fill: ranks - r.
std::vector<int> one_stage_in_flight(int ranks, int rank) { return {ranks - rank}; }
int single_leg(int, const Chunk&) { return 0; }

SlotCounts one_stage_counts(int micro_batches, bool deferred_weights) {
  SlotCounts c;
  c.forwards = c.backwards = c.lone_forwards = c.lone_backwards = micro_batches;
  if (deferred_weights) c.deferred = c.weights = micro_batches;
  return c;
}

// DualPipe on N ranks with M micro-batches per direction (reference §4.4, §15); DualPipeV on N
// ranks runs the op sequence of ranks 0..N-1 of DualPipe on 2N ranks with 2C micro-batches.
SlotCounts dualpipe_counts(int N, int M, int rank) {
  SlotCounts c;
  const int H = N / 2, h = std::min(rank, N - 1 - rank);
  const bool middle = h == H - 1;
  c.forwards = c.backwards = 2 * M;
  c.deferred = c.weights = 2 * (H - h - 1) + (h + 1);
  c.overlapped = 2 * (M - N + h + 1) + (H - h - 1) - (middle ? 1 : 0);
  c.lone_forwards = c.lone_backwards = 3 * H - h - 1 + (middle ? 1 : 0);
  return c;
}

const ScheduleTraits kOneFOneB{
    .kind = ScheduleKind::one_f_one_b,
    .name = "1f1b",
    .title = "1f1b",
    .paths = 1,
    .stages_per_rank = 1,
    .mirrored = false,
    .overlapped_slots = false,
    .rules = {.even_ranks = false, .even_micro_batches = false, .micro_batches_per_rank = 1},
    .held = one_stage_per_rank,
    .rank_of = rank_is_stage,
    .generate = generate_1f1b,
    .in_flight = one_stage_in_flight,
    .expected_counts = [](int, int micro_batches, int) { return one_stage_counts(micro_batches, false); },
    .legs = {nullptr, nullptr},
    .leg_of = single_leg,
};

// ZB1P keeps 1F1B's placement and peak: its deferred W passes hold no activations of their own
// beyond the ones the input-gradient pass released (the unit-cost engine's definition).
const ScheduleTraits kZeroBubble{
    .kind = ScheduleKind::zb1p,
    .name = "zb1p",
    .title = "zb1p",
    .paths = 1,
    .stages_per_rank = 1,
    .mirrored = false,
    .overlapped_slots = false,
    .rules = {.even_ranks = false, .even_micro_batches = false, .micro_batches_per_rank = 1},
    .held = one_stage_per_rank,
    .rank_of = rank_is_stage,
    .generate = generate_zb1p,
    .in_flight = one_stage_in_flight,
    .expected_counts = [](int, int micro_batches, int) { return one_stage_counts(micro_batches, true); },
    .legs = {nullptr, nullptr},
    .leg_of = single_leg,
};

// DualPipe: two opposite paths over the same stages; rank r runs stage r of path 0 and stage
// N-1-r of path 1. Its phase 0 is the path on which it is an early stage.
const ScheduleTraits kDualPipe{
    .kind = ScheduleKind::dualpipe,
    .name = "dualpipe",
    .title = "DualPipe",
    .paths = 2,
    .stages_per_rank = 2,
    .mirrored = true,
    .overlapped_slots = true,
    // The two directions mirror each other across the ranks and split the micro-batches.
    .rules = {.even_ranks = true, .even_micro_batches = true, .micro_batches_per_rank = 2},
    .held =
        [](int ranks, int rank) {
          const StageOnPath down{0, rank}, up{1, ranks - 1 - rank};
          return rank < ranks / 2 ? std::vector<StageOnPath>{down, up} : std::vector<StageOnPath>{up, down};
        },
    .rank_of = [](int ranks, int path, int stage) { return path == 0 ? stage : ranks - 1 - stage; },
    .generate = [](int ranks, int micro_batches) { return generate_dualpipe(ranks, micro_batches / 2); },
    // Rank r (h = min(r, N-1-r)) holds N - h of its early stage and h + 1 of its late one.
    .in_flight =
        [](int ranks, int rank) {
          const int h = std::min(rank, ranks - 1 - rank);
          return std::vector<int>{ranks - h, h + 1};
        },
    .expected_counts = [](int ranks, int micro_batches, int rank) { return dualpipe_counts(ranks, micro_batches / 2, rank); },
    .legs = {"direction 0", "direction 1"},
    .leg_of = [](int, const Chunk& chunk) { return chunk.path; },
};

// DualPipeV: one path folded into a V over 2N stages; rank r runs stage r on the way down and
// stage 2N-1-r on the way up (the turn happens inside rank N-1).
const ScheduleTraits kDualPipeV{
    .kind = ScheduleKind::dualpipev,
    .name = "dualpipev",
    .title = "DualPipeV",
    .paths = 1,
    .stages_per_rank = 2,
    .mirrored = true,
    .overlapped_slots = true,
    .rules = {.even_ranks = false, .even_micro_batches = false, .micro_batches_per_rank = 2},
    .held = [](int ranks, int rank) { return std::vector<StageOnPath>{{0, rank}, {0, 2 * ranks - 1 - rank}}; },
    .rank_of = [](int ranks, int, int stage) { return stage < ranks ? stage : 2 * ranks - 1 - stage; },
    // The op sequence of ranks 0..N-1 of DualPipe on 2N ranks with 2C micro-batches.
    .generate =
        [](int ranks, int micro_batches) {
          std::vector<std::vector<Slot>> slots = generate_dualpipe(2 * ranks, micro_batches);
          slots.resize(idx(ranks));
          return slots;
        },
    // Rank r holds 2N - r on the way down and r + 1 on the way up (its stages are half as deep).
    .in_flight = [](int ranks, int rank) { return std::vector<int>{2 * ranks - rank, rank + 1}; },
    .expected_counts = [](int ranks, int micro_batches, int rank) { return dualpipe_counts(2 * ranks, micro_batches, rank); },
    .legs = {"down the V", "up the V"},
    .leg_of = [](int ranks, const Chunk& chunk) { return chunk.stage >= ranks ? 1 : 0; },
};

}  // namespace

const ScheduleTraits& schedule_traits(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::one_f_one_b: return kOneFOneB;
    case ScheduleKind::zb1p: return kZeroBubble;
    case ScheduleKind::dualpipe: return kDualPipe;
    case ScheduleKind::dualpipev: return kDualPipeV;
  }
  throw std::invalid_argument("not a schedule kind: " + std::to_string(static_cast<int>(kind)));
}

const char* to_string(ScheduleKind kind) { return schedule_traits(kind).name; }

std::optional<ScheduleKind> schedule_kind_named(std::string_view name) {
  for (ScheduleKind kind : kScheduleKinds)
    if (name == schedule_traits(kind).name) return kind;
  return std::nullopt;
}

std::vector<std::string_view> schedule_names() {
  std::vector<std::string_view> names;
  for (ScheduleKind kind : kScheduleKinds) names.push_back(schedule_traits(kind).name);
  return names;
}

std::optional<BrokenRule> broken_rule(ScheduleKind kind, int64_t ranks, int64_t micro_batches,
                                      std::string_view ranks_word) {
  const ScheduleTraits& t = schedule_traits(kind);
  const ScheduleRules& r = t.rules;
  if (r.even_ranks && ranks % 2 != 0)
    return BrokenRule{true, std::string(t.title) + " needs an even number of pipeline ranks"};
  const int64_t least = r.micro_batches_per_rank * ranks;
  if ((r.even_micro_batches && micro_batches % 2 != 0) || micro_batches < least) {
    std::string need = std::string(t.title) + " needs " + (r.even_micro_batches ? "an even number of " : "") +
                       "micro-batches >= ";
    if (r.micro_batches_per_rank != 1) need += std::to_string(r.micro_batches_per_rank) + " x ";
    need += std::string(ranks_word) + " (" + std::to_string(least) + ")";
    return BrokenRule{false, need};
  }
  return std::nullopt;
}

}  // namespace tandem
