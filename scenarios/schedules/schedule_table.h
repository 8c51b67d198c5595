// Schedule table: what each pipeline schedule is, in one place. This is the only library code
// that branches on ScheduleKind; everything else (scenario loading, stage count, memory, the
// stage balancer, the optimizer's shards, the executor's budget, the schedule drawing, `tandem
// plan`) asks schedule_traits(kind). Tests may still name schedules: that is what they check.
//
// Per schedule:
//   name, title      the scenario's value ("dualpipe") and how messages name it ("DualPipe");
//   paths            the directions micro-batches travel (DualPipe: two opposite ones);
//   stages_per_rank  the stages a pipeline rank holds, one per phase (phase 0: its early stage);
//   held, rank_of    which (path, stage) each phase of a rank runs, and which rank runs a stage;
//   rules            the rank and micro-batch counts the generator needs;
//   generate         the per-rank slot lists (generators.h);
//   in_flight        per held stage, the peak micro-batches whose activations are alive: what
//                    activation memory is sized by (reference §4.2);
//   expected_counts  the reference's per-rank slot counts (§4.4, §15), to check generated slots;
//   legs             how a drawing tells chunks apart (DualPipe's directions, DualPipeV's halves).
//
// Contract, checked by tests/scenarios/test_schedule_table.cpp for pp 2, 4, 8, 16 and several
// micro-batch counts from the least the rules allow: held() places every (path, stage) on
// exactly one rank and the generated slots run each phase's chunks there, rank_of() inverts it,
// the generator lays out every count the rules accept, expected_counts() are the generated
// counts, and in_flight() equals the per-phase peak the unit-cost engine counts on the
// generated schedule. The counts are closed forms rather than a run of the generator so that a
// memory estimate does not build a schedule.
//
// A new schedule: a value in ScheduleKind and kScheduleKinds below, its traits in
// schedule_table.cpp (schedule_traits() switches without a default, so -Wswitch names a missing
// one), its generator in generators.{h,cpp}.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "scenarios/schedules/schedule.h"

namespace tandem {

enum class ScheduleKind { one_f_one_b, zb1p, dualpipe, dualpipev };

// Every schedule, in the order the key reference and `tandem plan` list them.
inline constexpr std::array<ScheduleKind, 4> kScheduleKinds = {ScheduleKind::one_f_one_b, ScheduleKind::zb1p,
                                                                ScheduleKind::dualpipe, ScheduleKind::dualpipev};

// One stage a rank holds: the path it belongs to and its position along that path.
struct StageOnPath {
  int path = 0;
  int stage = 0;
  bool operator==(const StageOnPath&) const = default;
};

struct ScheduleRules {
  bool even_ranks = false;          // the rank count must be even
  bool even_micro_batches = false;  // the micro-batch count must be even
  int micro_batches_per_rank = 1;   // at least this many micro-batches per pipeline rank
};

struct ScheduleTraits {
  ScheduleKind kind{};
  const char* name = "";   // the value of schedule.kind
  const char* title = "";  // in messages (1F1B and ZB1P are named as the scenario writes them)
  int paths = 1;
  int stages_per_rank = 1;
  // Ranks hold stage pairs (s, S-1-s): the balancer weighs each pair together.
  bool mirrored = false;
  // Overlapped F&B slots hide one chunk's all-to-alls behind another's compute; without them a
  // chunk waits for its own.
  bool overlapped_slots = false;
  ScheduleRules rules;

  // Per phase of `rank` (of `ranks`), the stage it runs.
  std::vector<StageOnPath> (*held)(int ranks, int rank) = nullptr;
  int (*rank_of)(int ranks, int path, int stage) = nullptr;
  std::vector<std::vector<Slot>> (*generate)(int ranks, int micro_batches) = nullptr;
  // Per phase of `rank`, the peak micro-batches in flight (micro-batches >= the rules' least).
  std::vector<int> (*in_flight)(int ranks, int rank) = nullptr;
  SlotCounts (*expected_counts)(int ranks, int micro_batches, int rank) = nullptr;
  // The names of the two legs a drawing shades apart, {nullptr, nullptr} for one leg, and the
  // leg of a chunk.
  std::array<const char*, 2> legs{};
  int (*leg_of)(int ranks, const Chunk& chunk) = nullptr;

  // Every path visits every stage once and every phase of a rank holds one (path, stage):
  // distinct stages = ranks x stages per rank / paths, and each stage has `paths` copies.
  int64_t stages(int64_t ranks) const { return ranks * stages_per_rank / paths; }
  int64_t stage_copies() const { return paths; }
};

const ScheduleTraits& schedule_traits(ScheduleKind kind);

const char* to_string(ScheduleKind kind);
std::optional<ScheduleKind> schedule_kind_named(std::string_view name);
std::vector<std::string_view> schedule_names();  // in kScheduleKinds' order

// The first rule of `kind` that `ranks` pipeline ranks and `micro_batches` micro-batches break:
// whether it is a rule on the ranks, and what the schedule needs ("DualPipe needs an even number
// of micro-batches >= 2 x pp (8)"), `ranks_word` naming the rank count as the reader knows it.
// The caller adds what it got. nullopt: every rule holds.
struct BrokenRule {
  bool on_ranks = false;
  std::string need;
};
std::optional<BrokenRule> broken_rule(ScheduleKind kind, int64_t ranks, int64_t micro_batches,
                                      std::string_view ranks_word);

}  // namespace tandem
