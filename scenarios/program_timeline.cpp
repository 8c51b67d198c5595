#include "scenarios/program_timeline.h"

#include <algorithm>
#include <map>

#include "common/signed_index.h"

namespace tandem {

ProgramTimeline play_program(const Program& p, const TaskTimes& t) {
  const size_t R = p.tasks.size();
  ProgramTimeline out;
  constexpr double kUnknown = -1;
  out.start.resize(R);
  out.end.resize(R);
  for (size_t r = 0; r < R; ++r) {
    out.start[r].assign(p.tasks[r].size(), kUnknown);
    out.end[r].assign(p.tasks[r].size(), kUnknown);
  }
  std::map<int, double> posted;  // message id -> when its send was posted
  struct Cursor {
    size_t next = 0;
    double free = 0;
  };
  std::vector<Cursor> compute(R), comm(R);
  auto advance = [&](size_t r, Stream stream, Cursor& c) {
    bool moved = false;
    const auto& tasks = p.tasks[r];
    while (true) {
      while (c.next < tasks.size() && tasks[c.next].stream != stream) ++c.next;
      if (c.next >= tasks.size()) return moved;
      const Task& task = tasks[c.next];
      double ready = c.free;
      for (int d : task.deps) {
        const double e = out.end[r][idx(d)];
        if (e == kUnknown) return moved;
        ready = std::max(ready, e);
      }
      const int i = static_cast<int>(c.next);
      double finish = 0;
      if (task.kind == TaskKind::pp_recv) {
        auto sent = posted.find(task.message);
        if (sent == posted.end()) return moved;
        finish = std::max(ready, sent->second) + t.transfer(static_cast<int>(r), i);
      } else {
        finish = ready + (task.kind == TaskKind::pp_send ? 0.0 : t.duration(static_cast<int>(r), i));
        if (task.kind == TaskKind::pp_send) posted[task.message] = ready;
      }
      out.start[r][c.next] = ready;
      out.end[r][c.next] = finish;
      c.free = finish;
      ++c.next;
      moved = true;
    }
  };
  bool progress = true;
  while (progress) {
    progress = false;
    for (size_t r = 0; r < R; ++r) {
      // A rank's streams feed each other through dependencies: advance both until neither moves.
      while (advance(r, Stream::compute, compute[r]) | advance(r, Stream::comm, comm[r])) progress = true;
    }
  }
  out.finished = true;
  for (size_t r = 0; r < R; ++r) {
    for (double e : out.end[r]) {
      if (e == kUnknown) out.finished = false;
      out.step_time = std::max(out.step_time, e);
    }
  }
  return out;
}

}  // namespace tandem
