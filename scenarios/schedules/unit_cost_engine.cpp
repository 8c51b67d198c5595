#include "scenarios/schedules/unit_cost_engine.h"

#include <algorithm>
#include <limits>

#include "common/signed_index.h"

namespace tandem {

double UnitCosts::duration(SlotKind k) const {
  switch (k) {
    case SlotKind::F: return F;
    case SlotKind::B: return B;
    case SlotKind::B_input: return B - W;
    case SlotKind::W: return W;
    case SlotKind::FB: return FB;
  }
  return 0;
}

double UnitCostRun::max_bubble() const {
  return bubble.empty() ? 0 : *std::max_element(bubble.begin(), bubble.end());
}

UnitCostRun run_unit_costs(const Schedule& s, const UnitCosts& c) {
  return run_slot_costs(s, [&c](int, const Slot& slot) { return c.duration(slot.kind); });
}

UnitCostRun run_slot_costs(const Schedule& s, const SlotDuration& duration) {
  const size_t R = idx(s.ranks);
  UnitCostRun run;
  run.timeline.resize(R);
  std::vector<std::vector<const Message*>> needs(R);  // per rank, per slot: messages needed
  std::vector<std::vector<std::vector<const Message*>>> by_slot(R);
  for (size_t r = 0; r < R; ++r) by_slot[r].resize(s.slots[r].size());
  for (const Message& m : s.messages) by_slot[idx(m.to_rank)][idx(m.to_slot)].push_back(&m);

  std::vector<size_t> next(R, 0);
  std::vector<double> free_at(R, 0);
  const double unknown = -1;
  for (size_t r = 0; r < R; ++r) run.timeline[r].assign(s.slots[r].size(), SlotTiming{unknown, unknown});

  // Sweep the ranks until no slot can start; each sweep starts every slot whose inputs are sent.
  bool progress = true;
  while (progress) {
    progress = false;
    for (size_t r = 0; r < R; ++r) {
      while (next[r] < s.slots[r].size()) {
        const size_t i = next[r];
        double ready = free_at[r];
        bool blocked = false;
        for (const Message* m : by_slot[r][i]) {
          const SlotTiming& t = run.timeline[idx(m->from_rank)][idx(m->from_slot)];
          if (t.end == unknown) {
            blocked = true;
            break;
          }
          ready = std::max(ready, t.end);
        }
        if (blocked) break;
        run.timeline[r][i] = SlotTiming{ready, ready + duration(static_cast<int>(r), s.slots[r][i])};
        free_at[r] = run.timeline[r][i].end;
        ++next[r];
        progress = true;
      }
    }
  }
  run.finished = true;
  for (size_t r = 0; r < R; ++r) {
    if (next[r] < s.slots[r].size()) {
      run.finished = false;
      run.stuck += "rank " + std::to_string(r) + " waits at slot " + std::to_string(next[r]) + " (" +
                   to_string(s.slots[r][next[r]].kind) + "); ";
    }
  }
  run.busy.assign(R, 0);
  run.bubble.assign(R, 0);
  run.peak_activations.assign(R, 0);
  for (size_t r = 0; r < R; ++r) {
    run.step_time = std::max(run.step_time, free_at[r]);
    int live = 0;
    std::vector<int> live_by_phase;
    std::vector<int>& peak_by_phase = run.peak_by_phase.emplace_back();
    auto count = [&](const Chunk& c, int change) {
      const size_t phase = idx(c.phase);
      if (phase >= live_by_phase.size()) {
        live_by_phase.resize(phase + 1, 0);
        peak_by_phase.resize(phase + 1, 0);
      }
      live_by_phase[phase] += change;
      peak_by_phase[phase] = std::max(peak_by_phase[phase], live_by_phase[phase]);
    };
    for (const Slot& sl : s.slots[r]) {
      run.busy[r] += duration(static_cast<int>(r), sl);
      const bool starts = sl.kind == SlotKind::F || sl.kind == SlotKind::FB;
      const bool ends = sl.kind == SlotKind::B || sl.kind == SlotKind::B_input || sl.kind == SlotKind::FB;
      if (starts) {
        ++live;
        count(sl.f, +1);
      }
      run.peak_activations[r] = std::max(run.peak_activations[r], live);
      if (ends) {
        --live;
        count(sl.b, -1);
      }
    }
  }
  for (size_t r = 0; r < R; ++r) run.bubble[r] = run.step_time - run.busy[r];
  return run;
}

}  // namespace tandem
