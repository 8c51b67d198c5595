#include "scenarios/schedules/schedule.h"

#include <map>
#include <tuple>

#include "common/input_error.h"
#include "scenarios/scenario.h"
#include "scenarios/schedules/generators.h"

namespace tandem {

const char* to_string(SlotKind k) {
  switch (k) {
    case SlotKind::F: return "F";
    case SlotKind::B: return "B";
    case SlotKind::Bx: return "B*";
    case SlotKind::W: return "W";
    case SlotKind::FB: return "F&B";
  }
  return "?";
}

int Schedule::rank_of(int path, int stage) const {
  switch (kind) {
    case ScheduleKind::dualpipe: return path == 0 ? stage : ranks - 1 - stage;
    case ScheduleKind::dualpipev: return stage < ranks ? stage : 2 * ranks - 1 - stage;
    default: return stage;
  }
}

std::string Schedule::op_list(int rank) const {
  std::string out;
  for (const Slot& s : slots[static_cast<size_t>(rank)]) {
    if (!out.empty()) out += " ";
    const std::string f = "F" + std::to_string(s.f.phase), b = std::to_string(s.b.phase);
    switch (s.kind) {
      case SlotKind::F: out += f; break;
      case SlotKind::B: out += "B" + b; break;
      case SlotKind::Bx: out += "B" + b + "*"; break;
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
      case SlotKind::Bx: ++c.backwards; ++c.deferred; ++c.lone_backwards; break;
      case SlotKind::W: ++c.weights; break;
      case SlotKind::FB: ++c.forwards; ++c.backwards; ++c.overlapped; break;
    }
  }
  return c;
}

SlotCounts expected_counts(ScheduleKind kind, int ranks, int micro_batches, int rank) {
  SlotCounts c;
  if (kind == ScheduleKind::f1b1 || kind == ScheduleKind::zb1p) {
    c.forwards = c.backwards = c.lone_forwards = c.lone_backwards = micro_batches;
    if (kind == ScheduleKind::zb1p) c.deferred = c.weights = micro_batches;
    return c;
  }
  // DualPipe on N ranks with M micro-batches per direction; DualPipeV on N ranks runs the op
  // sequence of ranks 0..N-1 of DualPipe on 2N ranks with 2C micro-batches.
  const int N = kind == ScheduleKind::dualpipe ? ranks : 2 * ranks;
  const int M = kind == ScheduleKind::dualpipe ? micro_batches / 2 : micro_batches;
  const int H = N / 2, h = std::min(rank, N - 1 - rank);
  const bool middle = h == H - 1;
  c.forwards = c.backwards = 2 * M;
  c.deferred = c.weights = 2 * (H - h - 1) + (h + 1);
  c.overlapped = 2 * (M - N + h + 1) + (H - h - 1) - (middle ? 1 : 0);
  c.lone_forwards = c.lone_backwards = 3 * H - h - 1 + (middle ? 1 : 0);
  return c;
}

namespace {

void require(bool ok, const std::string& file, const std::string& key, const std::string& why) {
  if (!ok) throw_input_error(file, key, why);
}

// Fills in the path, stage and micro-batch of every chunk from each slot's phase, and the
// messages between slots, once the generator has laid out the phases in order.
void link(Schedule& s, const std::vector<std::vector<int>>& phase_to_path_stage_path,
          const std::vector<std::vector<int>>& phase_to_stage) {
  // Which slot runs (and which slot releases) F and B of each chunk.
  struct Where {
    int rank = -1, slot = -1, release = -1;
  };
  std::map<std::tuple<int, int, int>, Where> fwd, bwd;  // (path, mb, stage)
  for (int r = 0; r < s.ranks; ++r) {
    std::vector<int> next_f(2, 0), next_b(2, 0);
    auto& slots = s.slots[static_cast<size_t>(r)];
    for (size_t i = 0; i < slots.size(); ++i) {
      Slot& sl = slots[i];
      auto fill = [&](Chunk& c, std::vector<int>& next) {
        const int p = c.phase;
        c.path = phase_to_path_stage_path[static_cast<size_t>(r)][static_cast<size_t>(p)];
        c.stage = phase_to_stage[static_cast<size_t>(r)][static_cast<size_t>(p)];
        c.micro_batch = c.path * s.per_path() + next[static_cast<size_t>(p)]++;
      };
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB) fill(sl.f, next_f);
      if (sl.kind == SlotKind::B || sl.kind == SlotKind::Bx || sl.kind == SlotKind::FB) fill(sl.b, next_b);
    }
  }
  // W runs the oldest deferred weight gradients (a FIFO per rank).
  for (int r = 0; r < s.ranks; ++r) {
    std::vector<Chunk> fifo;
    size_t head = 0;
    for (Slot& sl : s.slots[static_cast<size_t>(r)]) {
      if (sl.kind == SlotKind::Bx) fifo.push_back(sl.b);
      if (sl.kind == SlotKind::W) sl.b = head < fifo.size() ? fifo[head++] : Chunk{0, -1, 0, 0};
    }
  }
  for (int r = 0; r < s.ranks; ++r) {
    auto& slots = s.slots[static_cast<size_t>(r)];
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& sl = slots[i];
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB)
        fwd[{sl.f.path, sl.f.micro_batch, sl.f.stage}] = {r, static_cast<int>(i), sl.f_release};
      if (sl.kind == SlotKind::B || sl.kind == SlotKind::Bx || sl.kind == SlotKind::FB)
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
  std::vector<std::vector<int>> path(static_cast<size_t>(ranks)), stage(static_cast<size_t>(ranks));
  switch (kind) {
    case ScheduleKind::f1b1:
    case ScheduleKind::zb1p:
      require(C >= ranks, file, key,
              std::string(to_string(kind)) + " needs micro-batches >= pipeline ranks (" +
                  std::to_string(ranks) + "), got " + std::to_string(C));
      s.stages = ranks;
      s.paths = 1;
      for (int r = 0; r < ranks; ++r) {
        path[static_cast<size_t>(r)] = {0};
        stage[static_cast<size_t>(r)] = {r};
      }
      s.slots = kind == ScheduleKind::f1b1 ? generate_1f1b(ranks, C) : generate_zb1p(ranks, C);
      break;
    case ScheduleKind::dualpipe:
      require(ranks % 2 == 0, file, "plan.pp", "DualPipe needs an even number of pipeline ranks, got " +
                                                   std::to_string(ranks));
      require(C % 2 == 0 && C >= 2 * ranks, file, key,
              "DualPipe needs an even number of micro-batches >= 2 x pipeline ranks (" +
                  std::to_string(2 * ranks) + "), got " + std::to_string(C));
      s.stages = ranks;
      s.paths = 2;
      for (int r = 0; r < ranks; ++r) {
        // Phase 0 is the direction in which this rank is an early stage.
        const bool first_half = r < ranks / 2;
        path[static_cast<size_t>(r)] = first_half ? std::vector<int>{0, 1} : std::vector<int>{1, 0};
        stage[static_cast<size_t>(r)] = first_half ? std::vector<int>{r, ranks - 1 - r}
                                                   : std::vector<int>{ranks - 1 - r, r};
      }
      s.slots = generate_dualpipe(ranks, C / 2);
      break;
    case ScheduleKind::dualpipev:
      require(C >= 2 * ranks, file, key,
              "DualPipeV needs micro-batches >= 2 x pipeline ranks (" + std::to_string(2 * ranks) +
                  "), got " + std::to_string(C));
      s.stages = 2 * ranks;
      s.paths = 1;
      for (int r = 0; r < ranks; ++r) {
        path[static_cast<size_t>(r)] = {0, 0};
        stage[static_cast<size_t>(r)] = {r, 2 * ranks - 1 - r};
      }
      // The op sequence of ranks 0..N-1 of DualPipe on 2N ranks with 2C micro-batches.
      s.slots = generate_dualpipe(2 * ranks, C);
      s.slots.resize(static_cast<size_t>(ranks));
      break;
  }
  link(s, path, stage);
  return s;
}

}  // namespace tandem
