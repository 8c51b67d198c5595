// The schedule table against the schedules the generators make: names, placement, rules, slot
// counts, and in-flight micro-batches (the unit-cost engine's per-phase peaks).
#include <catch2/catch.hpp>

#include <set>
#include <utility>

#include "common/input_error.h"
#include "common/signed_index.h"
#include "scenarios/schedules/schedule_table.h"
#include "scenarios/schedules/unit_cost_engine.h"

using namespace tandem;

namespace {

const int kPipelineRanks[] = {2, 4, 8, 16};

// The least micro-batch count the schedule's rules allow on `pp` ranks, and some above it.
std::vector<int> valid_micro_batches(const ScheduleTraits& t, int pp) {
  const int least = t.rules.micro_batches_per_rank * pp;
  std::vector<int> out;
  for (int extra : {0, 1, 2, 3, pp, 2 * pp + 1, 6 * pp}) {
    const int C = least + extra;
    if (!(t.rules.even_micro_batches && C % 2 != 0)) out.push_back(C);
  }
  return out;
}

}  // namespace

TEST_CASE("every schedule has its own traits and a name that reads back", "[schedule]") {
  for (ScheduleKind k : kScheduleKinds) {
    CHECK(schedule_traits(k).kind == k);
    CHECK(schedule_kind_named(to_string(k)) == k);
  }
  CHECK_FALSE(schedule_kind_named("gpipe").has_value());
  // kScheduleKinds lists every kind the table knows: the value after the last has no traits.
  for (size_t i = 0; i <= kScheduleKinds.size(); ++i) {
    const auto k = static_cast<ScheduleKind>(i);
    if (i < kScheduleKinds.size()) CHECK(kScheduleKinds[i] == k);
    else CHECK_THROWS(schedule_traits(k));
  }
  CHECK(schedule_names() == std::vector<std::string_view>{"1f1b", "zb1p", "dualpipe", "dualpipev"});
}

TEST_CASE("the table places stages where the generated schedule runs them", "[schedule]") {
  for (ScheduleKind k : kScheduleKinds) {
    const ScheduleTraits& t = schedule_traits(k);
    for (int pp : kPipelineRanks) {
      INFO(to_string(k) << " pp " << pp);
      const Schedule s = make_schedule(k, pp, t.rules.micro_batches_per_rank * pp);
      CHECK(s.stages == t.stages(pp));
      CHECK(s.paths == t.paths);
      const int S = s.stages;
      std::set<std::pair<int, int>> placed;
      bool overlapped = false;
      for (int r = 0; r < pp; ++r) {
        const std::vector<StageOnPath> held = t.held(pp, r);
        CHECK(static_cast<int>(held.size()) == t.stages_per_rank);
        for (const StageOnPath& h : held) {
          CHECK(t.rank_of(pp, h.path, h.stage) == r);
          CHECK(s.rank_of(h.path, h.stage) == r);
          CHECK(placed.insert({h.path, h.stage}).second);  // no (path, stage) twice
        }
        if (t.mirrored) CHECK(held[0].stage + held[1].stage == S - 1);
        // Every chunk a slot runs is the (path, stage) of its phase; its leg is one the drawing names.
        for (const Slot& sl : s.slots[idx(r)]) {
          overlapped = overlapped || sl.kind == SlotKind::FB;
          for (const Chunk* c : {&sl.f, &sl.b}) {
            if (c == &sl.f && sl.kind != SlotKind::F && sl.kind != SlotKind::FB) continue;
            if (c == &sl.b && sl.kind == SlotKind::F) continue;
            REQUIRE(c->phase < static_cast<int>(held.size()));
            CHECK(StageOnPath{c->path, c->stage} == held[idx(c->phase)]);
            const int leg = t.leg_of(pp, *c);
            CHECK(leg >= 0);
            CHECK(leg <= (t.legs[1] ? 1 : 0));
          }
        }
      }
      CHECK(static_cast<int>(placed.size()) == t.paths * S);  // every stage of every path
      CHECK(s.rank_of(0, 0) == 0);
      CHECK(t.stage_copies() * S == pp * t.stages_per_rank);
      CHECK(overlapped == t.overlapped_slots);
    }
  }
}

TEST_CASE("in-flight micro-batches and slot counts equal the generated schedule's", "[schedule]") {
  for (ScheduleKind k : kScheduleKinds) {
    const ScheduleTraits& t = schedule_traits(k);
    for (int pp : kPipelineRanks) {
      for (int C : valid_micro_batches(t, pp)) {
        INFO(to_string(k) << " pp " << pp << " C " << C);
        const Schedule s = make_schedule(k, pp, C);
        const UnitCostRun run = run_unit_costs(s, {});
        REQUIRE(run.finished);
        for (int r = 0; r < pp; ++r) {
          INFO("rank " << r);
          CHECK(t.in_flight(pp, r) == run.peak_by_phase[idx(r)]);
          const SlotCounts got = count_slots(s.slots[idx(r)]);
          const SlotCounts want = t.expected_counts(pp, C, r);
          CHECK(got.forwards == want.forwards);
          CHECK(got.backwards == want.backwards);
          CHECK(got.deferred == want.deferred);
          CHECK(got.weights == want.weights);
          CHECK(got.overlapped == want.overlapped);
          CHECK(got.lone_forwards == want.lone_forwards);
          CHECK(got.lone_backwards == want.lone_backwards);
        }
      }
    }
  }
}

TEST_CASE("make_schedule lays out exactly the counts the table's rules accept", "[schedule]") {
  for (ScheduleKind k : kScheduleKinds) {
    for (int pp : {1, 2, 3, 4, 6}) {
      for (int C = 1; C <= 3 * pp + 1; ++C) {
        INFO(to_string(k) << " pp " << pp << " C " << C);
        bool made = true;
        try {
          make_schedule(k, pp, C);
        } catch (const InputException&) {
          made = false;
        }
        const auto broken = broken_rule(k, pp, C, "pp");
        CHECK(made == !broken.has_value());
        if (broken && broken->on_ranks) CHECK(pp % 2 != 0);
      }
    }
  }
  CHECK(broken_rule(ScheduleKind::dualpipe, 4, 6, "pp")->need ==
        "DualPipe needs an even number of micro-batches >= 2 x pp (8)");
  CHECK(broken_rule(ScheduleKind::dualpipe, 5, 20, "pp")->need == "DualPipe needs an even number of pipeline ranks");
  CHECK(broken_rule(ScheduleKind::dualpipev, 4, 7, "pipeline ranks")->need ==
        "DualPipeV needs micro-batches >= 2 x pipeline ranks (8)");
  CHECK(broken_rule(ScheduleKind::one_f_one_b, 8, 4, "pp")->need == "1f1b needs micro-batches >= pp (8)");
  CHECK_FALSE(broken_rule(ScheduleKind::zb1p, 8, 8, "pp").has_value());
}
