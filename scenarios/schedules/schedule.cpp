#include "scenarios/schedules/schedule.h"

#include <map>
#include <tuple>

#include "common/input_error.h"
#include "common/signed_index.h"
#include "scenarios/schedules/schedule_table.h"

namespace tandem {

const char* to_string(SlotKind k) {
  switch (k) {
    case SlotKind::F: return "F";
    case SlotKind::B: return "B";
    case SlotKind::B_input: return "B*";
    case SlotKind::W: return "W";
    case SlotKind::FB: return "F&B";
  }
  return "?";
}

int Schedule::rank_of(int path, int stage) const { return schedule_traits(kind).rank_of(ranks, path, stage); }

std::string Schedule::op_list(int rank) const {
  std::string out;
  for (const Slot& s : slots[idx(rank)]) {
    if (!out.empty()) out += " ";
    const std::string f = "F" + std::to_string(s.f.phase), b = std::to_string(s.b.phase);
    switch (s.kind) {
      case SlotKind::F: out += f; break;
      case SlotKind::B: out += "B" + b; break;
      case SlotKind::B_input: out += "B" + b + "*"; break;
      case SlotKind::W: out += "W"; break;
      case SlotKind::FB: out += "(" + f + "&B" + b + ")"; break;
    }
  }
  return out;
}

SlotCounts count_slots(const std::vector<Slot>& slots) {
  SlotCounts c;
  for (const Slot& s : slots) {
    switch (s.kind) {
      case SlotKind::F: ++c.forwards; ++c.lone_forwards; break;
      case SlotKind::B: ++c.backwards; ++c.lone_backwards; break;
      case SlotKind::B_input: ++c.backwards; ++c.deferred; ++c.lone_backwards; break;
      case SlotKind::W: ++c.weights; break;
      case SlotKind::FB: ++c.forwards; ++c.backwards; ++c.overlapped; break;
    }
  }
  return c;
}

namespace {

void require(bool ok, const std::string& file, const std::string& key, const std::string& why) {
  if (!ok) throw_input_error(file, key, why);
}

// Fills in the path, stage and micro-batch of every chunk from each slot's phase (the stage the
// table says that phase of the rank holds), and the messages between slots, once the generator
// has laid out the phases in order.
void link(Schedule& s) {
  // Which slot runs (and which slot releases) F and B of each chunk.
  struct Where {
    int rank = -1, slot = -1, release = -1;
  };
  std::map<std::tuple<int, int, int>, Where> fwd, bwd;  // (path, mb, stage)
  for (int r = 0; r < s.ranks; ++r) {
    const std::vector<StageOnPath> held = schedule_traits(s.kind).held(s.ranks, r);  // per phase
    std::vector<int> next_f(held.size(), 0), next_b(held.size(), 0);
    auto& slots = s.slots[idx(r)];
    for (size_t i = 0; i < slots.size(); ++i) {
      Slot& sl = slots[i];
      auto fill = [&](Chunk& c, std::vector<int>& next) {
        const size_t phase = idx(c.phase);
        c.path = held[phase].path;
        c.stage = held[phase].stage;
        c.micro_batch = c.path * s.per_path() + next[phase]++;
      };
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB) fill(sl.f, next_f);
      if (sl.kind == SlotKind::B || sl.kind == SlotKind::B_input || sl.kind == SlotKind::FB) fill(sl.b, next_b);
    }
  }
  // W runs the oldest deferred weight gradients (a FIFO per rank).
  for (int r = 0; r < s.ranks; ++r) {
    std::vector<Chunk> fifo;
    size_t head = 0;
    for (Slot& sl : s.slots[idx(r)]) {
      if (sl.kind == SlotKind::B_input) fifo.push_back(sl.b);
      if (sl.kind == SlotKind::W) sl.b = head < fifo.size() ? fifo[head++] : Chunk{0, -1, 0, 0};
    }
  }
  for (int r = 0; r < s.ranks; ++r) {
    auto& slots = s.slots[idx(r)];
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& sl = slots[i];
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB)
        fwd[{sl.f.path, sl.f.micro_batch, sl.f.stage}] = {r, static_cast<int>(i), sl.f_release};
      if (sl.kind == SlotKind::B || sl.kind == SlotKind::B_input || sl.kind == SlotKind::FB)
        bwd[{sl.b.path, sl.b.micro_batch, sl.b.stage}] = {r, static_cast<int>(i), sl.b_release};
    }
  }
  int id = 0;
  for (const auto& [key, to] : fwd) {
    const auto [path, mb, stage] = key;
    if (stage == 0) continue;
    auto it = fwd.find({path, mb, stage - 1});
    if (it == fwd.end()) continue;  // reported by the checks
    s.messages.push_back(Message{id++, false, Chunk{path, mb, stage - 1, 0}, it->second.rank,
                                 it->second.release, to.rank, to.slot});
  }
  for (const auto& [key, to] : bwd) {
    const auto [path, mb, stage] = key;
    if (stage == s.stages - 1) continue;
    auto it = bwd.find({path, mb, stage + 1});
    if (it == bwd.end()) continue;
    s.messages.push_back(Message{id++, true, Chunk{path, mb, stage + 1, 0}, it->second.rank,
                                 it->second.release, to.rank, to.slot});
  }
}

}  // namespace

Schedule make_schedule(ScheduleKind kind, int ranks, int C, const std::string& file,
                       const std::string& key) {
  Schedule s;
  s.kind = kind;
  s.ranks = ranks;
  s.micro_batches = C;
  require(ranks >= 1, file, key, "needs at least one pipeline rank");
  require(C >= 1, file, key, "needs at least one micro-batch");
  const ScheduleTraits& traits = schedule_traits(kind);
  if (const auto broken = broken_rule(kind, ranks, C, "pipeline ranks"))
    throw_input_error(file, broken->on_ranks ? "plan.pp" : key,
                      broken->need + ", got " + std::to_string(broken->on_ranks ? ranks : C));
  s.stages = static_cast<int>(traits.stages(ranks));
  s.paths = traits.paths;
  s.slots = traits.generate(ranks, C);
  link(s);
  return s;
}

}  // namespace tandem
