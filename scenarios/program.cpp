#include "scenarios/program.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "common/sha256.h"
#include "common/signed_index.h"
#include "scenarios/scenario.h"
#include "scenarios/schedules/schedule_table.h"
#include "scenarios/schedules/unit_cost_engine.h"

namespace tandem {

const char* to_string(TaskKind k) {
  switch (k) {
    case TaskKind::attn_f: return "attn_f";
    case TaskKind::attn_b: return "attn_b";
    case TaskKind::attn_w: return "attn_w";
    case TaskKind::dispatch_f: return "dispatch_f";
    case TaskKind::dispatch_b: return "dispatch_b";
    case TaskKind::mlp_f: return "mlp_f";
    case TaskKind::mlp_b: return "mlp_b";
    case TaskKind::mlp_w: return "mlp_w";
    case TaskKind::combine_f: return "combine_f";
    case TaskKind::combine_b: return "combine_b";
    case TaskKind::loss: return "loss";
    case TaskKind::pp_send: return "pp_send";
    case TaskKind::pp_recv: return "pp_recv";
    case TaskKind::dp_reduce_scatter: return "dp_reduce_scatter";
    case TaskKind::dp_all_gather: return "dp_all_gather";
    case TaskKind::optimizer: return "optimizer";
  }
  return "?";
}

const char* to_string(Stream s) { return s == Stream::compute ? "compute" : "comm"; }

namespace {

bool is_comm(TaskKind k) {
  return k == TaskKind::dispatch_f || k == TaskKind::dispatch_b || k == TaskKind::combine_f ||
         k == TaskKind::combine_b || k == TaskKind::pp_send || k == TaskKind::pp_recv ||
         k == TaskKind::dp_reduce_scatter || k == TaskKind::dp_all_gather;
}

bool block_has_part(const Block& b, Part part) {
  for (const auto& op : b.ops)
    if (op.part == part && op.kind != OpKind::loss) return true;
  return false;
}

bool block_has_loss(const Block& b) {
  for (const auto& op : b.ops)
    if (op.kind == OpKind::loss) return true;
  return false;
}

// The sub-ops of one block in one direction, in dependency order.
std::vector<TaskKind> forward_ops(const Block& b) {
  std::vector<TaskKind> k;
  if (block_has_part(b, Part::attention)) k.push_back(TaskKind::attn_f);
  if (b.has_all_to_all) k.push_back(TaskKind::dispatch_f);
  if (block_has_part(b, Part::mlp)) k.push_back(TaskKind::mlp_f);
  if (b.has_all_to_all) k.push_back(TaskKind::combine_f);
  if (block_has_loss(b)) k.push_back(TaskKind::loss);
  return k;
}

// Builds one rank's task list.
class RankExpander {
 public:
  RankExpander(const Schedule& s, const Workload& w, const StagePartition& p, int rank,
               std::vector<Task>& out, const ProgramOptions& o)
      : s_(s), w_(w), p_(p), rank_(rank), out_(out), o_(o) {
    for (const Message& m : s.messages) {
      if (m.to_rank == rank) incoming_[{m.to_slot, m.gradient, m.chunk.micro_batch}] = &m;
      if (m.from_rank == rank) outgoing_[m.from_slot].push_back(&m);
    }
    for (const Slot& sl : s.slots[idx(rank)])
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB) chunks_[sl.f.stage]++;
  }

  void expand() {
    const auto& slots = s_.slots[idx(rank_)];
    for (size_t i = 0; i < slots.size(); ++i) {
      slot_ = static_cast<int>(i);
      const Slot& sl = slots[i];
      switch (sl.kind) {
        case SlotKind::F: forward(sl.f); break;
        case SlotKind::B: backward(sl.b, true); break;
        case SlotKind::B_input: backward(sl.b, false); break;
        case SlotKind::W: weights(sl.b); break;
        case SlotKind::FB: overlapped(sl.f, sl.b); break;
      }
      sends_released_here();
      if (o_.dp_overlap) reduce_finished_stages();
    }
    end_of_step();
  }

 private:
  using Key = std::tuple<int, int, int>;  // path, micro-batch, stage
  static Key key(const Chunk& c) { return {c.path, c.micro_batch, c.stage}; }

  const Stage& stage_of(const Chunk& c) const { return p_.stages[idx(c.stage)]; }

  int add(TaskKind k, const Chunk& c, int block, std::vector<int> deps, Group g = Group::none) {
    Task t;
    t.kind = k;
    t.stream = is_comm(k) ? Stream::comm : Stream::compute;
    t.group = g;
    t.slot = slot_;
    t.chunk = c;
    t.block = block;
    deps.erase(std::remove(deps.begin(), deps.end(), -1), deps.end());
    t.deps = std::move(deps);
    out_.push_back(t);
    return static_cast<int>(out_.size()) - 1;
  }

  // The activation or gradient this chunk needs from its neighbour stage: a pp_recv task, or
  // (DualPipeV's turn inside one rank) the producing task itself.
  int receive(const Chunk& c, bool gradient) {
    const Chunk from{c.path, c.micro_batch, c.stage + (gradient ? 1 : -1), 0};
    auto it = incoming_.find({slot_, gradient, c.micro_batch});
    if (it == incoming_.end()) return -1;
    const Message* m = it->second;
    if (m->from_rank == rank_) {
      auto done = (gradient ? last_b_ : last_f_).find(key(from));
      return done == (gradient ? last_b_ : last_f_).end() ? -1 : done->second;
    }
    const int t = add(TaskKind::pp_recv, c, -1, {});
    out_[idx(t)].message = m->id;
    out_[idx(t)].peer = m->from_rank;
    return t;
  }

  // Forward sub-ops of one block, chained after `prev`; returns the last.
  int forward_block(const Chunk& c, int block, int prev) {
    for (TaskKind k : forward_ops(w_.blocks[idx(block)]))
      prev = add(k, c, block, {prev}, (k == TaskKind::dispatch_f || k == TaskKind::combine_f) ? Group::ep : Group::none);
    return prev;
  }

  void forward(const Chunk& c) {
    int prev = receive(c, false);
    const Stage& st = stage_of(c);
    for (size_t b = st.first_block; b < st.end_block; ++b) prev = forward_block(c, static_cast<int>(b), prev);
    last_f_[key(c)] = prev;
  }

  // Backward sub-ops of one block; the W parts are recorded for a later W slot unless `with_w`.
  int backward_block(const Chunk& c, int block, int prev, bool with_w) {
    const Block& b = w_.blocks[idx(block)];
    if (b.has_all_to_all) prev = add(TaskKind::combine_b, c, block, {prev}, Group::ep);
    if (block_has_part(b, Part::mlp) || block_has_loss(b)) {
      prev = add(TaskKind::mlp_b, c, block, {prev});
      weight_part(c, block, TaskKind::mlp_w, prev, with_w);
    }
    if (b.has_all_to_all) prev = add(TaskKind::dispatch_b, c, block, {prev}, Group::ep);
    if (block_has_part(b, Part::attention)) {
      prev = add(TaskKind::attn_b, c, block, {prev});
      weight_part(c, block, TaskKind::attn_w, prev, with_w);
    }
    return prev;
  }

  void weight_part(const Chunk& c, int block, TaskKind k, int after, bool now) {
    if (now) add(k, c, block, {after});
    else deferred_[key(c)].push_back({k, block, after});
  }

  int backward_start(const Chunk& c) {
    const int grad = receive(c, true);
    auto f = last_f_.find(key(c));
    return grad >= 0 ? grad : (f != last_f_.end() ? f->second : -1);
  }

  void backward(const Chunk& c, bool with_w) {
    int prev = backward_start(c);
    const Stage& st = stage_of(c);
    for (size_t b = st.end_block; b-- > st.first_block;) prev = backward_block(c, static_cast<int>(b), prev, with_w);
    last_b_[key(c)] = prev;
    if (with_w) weights_done_[c.stage]++;
  }

  void weights(const Chunk& c) {
    auto it = deferred_.find(key(c));
    if (it == deferred_.end()) return;
    for (const auto& [k, block, after] : it->second) add(k, c, block, {after});
    deferred_.erase(it);
    weights_done_[c.stage]++;
  }

  // dp_overlap: a stage whose every chunk has had its weight gradients gets its reduce-scatter
  // now, after the rank's compute so far (which includes those passes).
  void reduce_finished_stages() {
    for (const auto& [stage, n] : chunks_) {
      if (reduced_.count(stage) || weights_done_[stage] < n) continue;
      int last_compute = -1;
      for (size_t i = 0; i < out_.size(); ++i)
        if (out_[i].stream == Stream::compute) last_compute = static_cast<int>(i);
      reduce_scatters_.push_back(add(TaskKind::dp_reduce_scatter, Chunk{0, -1, stage, 0}, -1, {last_compute}, Group::dp));
      reduced_.insert(stage);
    }
  }

  // One forward chunk and one backward chunk of another micro-batch, interleaved layer by layer:
  // step i pairs the forward's i-th block with the backward's i-th block from the end.
  void overlapped(const Chunk& f, const Chunk& b) {
    int pf = receive(f, false);
    int pb = backward_start(b);
    const Stage& sf = stage_of(f);
    const Stage& sb = stage_of(b);
    const size_t nf = sf.end_block - sf.first_block, nb = sb.end_block - sb.first_block;
    for (size_t i = 0; i < std::max(nf, nb); ++i) {
      const int fb = i < nf ? static_cast<int>(sf.first_block + i) : -1;
      const int bb = i < nb ? static_cast<int>(sb.end_block - 1 - i) : -1;
      const Block* F = fb >= 0 ? &w_.blocks[idx(fb)] : nullptr;
      const Block* B = bb >= 0 ? &w_.blocks[idx(bb)] : nullptr;
      const bool fa2a = F && F->has_all_to_all, ba2a = B && B->has_all_to_all;
      int mlp_b = -1, attn_b = -1;
      if (ba2a) pb = add(TaskKind::combine_b, b, bb, {pb}, Group::ep);
      if (F && block_has_part(*F, Part::attention)) pf = add(TaskKind::attn_f, f, fb, {pf});
      if (B && (block_has_part(*B, Part::mlp) || block_has_loss(*B))) pb = mlp_b = add(TaskKind::mlp_b, b, bb, {pb});
      if (fa2a) pf = add(TaskKind::dispatch_f, f, fb, {pf}, Group::ep);
      if (ba2a) pb = add(TaskKind::dispatch_b, b, bb, {pb}, Group::ep);
      if (mlp_b >= 0) add(TaskKind::mlp_w, b, bb, {mlp_b});
      if (F && block_has_part(*F, Part::mlp)) pf = add(TaskKind::mlp_f, f, fb, {pf});
      if (B && block_has_part(*B, Part::attention)) {
        pb = attn_b = add(TaskKind::attn_b, b, bb, {pb});
        add(TaskKind::attn_w, b, bb, {attn_b});
      }
      if (fa2a) pf = add(TaskKind::combine_f, f, fb, {pf}, Group::ep);
      if (F && block_has_loss(*F)) pf = add(TaskKind::loss, f, fb, {pf});
    }
    last_f_[key(f)] = pf;
    last_b_[key(b)] = pb;
    weights_done_[b.stage]++;
  }

  // pp_send tasks for every output released at the end of this slot (DualPipe may hold an
  // output back and release it a few slots later).
  void sends_released_here() {
    auto it = outgoing_.find(slot_);
    if (it == outgoing_.end()) return;
    for (const Message* m : it->second) {
      if (m->to_rank == rank_) continue;  // handed over inside the rank
      auto& done = m->gradient ? last_b_ : last_f_;
      auto d = done.find(key(m->chunk));
      const int t = add(TaskKind::pp_send, m->chunk, -1, {d == done.end() ? -1 : d->second});
      out_[idx(t)].message = m->id;
      out_[idx(t)].peer = m->to_rank;
    }
  }

  // ZeRO-1: reduce-scatter the gradients, step the optimizer on the local shard, all-gather.
  void end_of_step() {
    slot_ = -1;
    // After the last task of each stream (streams run in order, so that is after all of them).
    int last_compute = -1, last_comm = -1;
    for (size_t i = 0; i < out_.size(); ++i)
      (out_[i].stream == Stream::compute ? last_compute : last_comm) = static_cast<int>(i);
    const Chunk none{0, -1, -1, 0};
    std::vector<int> reduced = reduce_scatters_;
    if (!o_.dp_overlap) reduced.push_back(add(TaskKind::dp_reduce_scatter, none, -1, {last_compute, last_comm}, Group::dp));
    reduced.push_back(last_compute);
    const int opt = add(TaskKind::optimizer, none, -1, reduced);
    add(TaskKind::dp_all_gather, none, -1, {opt}, Group::dp);
  }

  struct Deferred {
    TaskKind kind;
    int block;
    int after;
  };
  const Schedule& s_;
  const Workload& w_;
  const StagePartition& p_;
  int rank_;
  std::vector<Task>& out_;
  int slot_ = 0;
  std::map<std::tuple<int, bool, int>, const Message*> incoming_;  // (slot, gradient, mb)
  std::map<int, std::vector<const Message*>> outgoing_;            // release slot -> messages
  std::map<Key, int> last_f_, last_b_;
  std::map<Key, std::vector<Deferred>> deferred_;
  const ProgramOptions& o_;
  std::map<int, int> chunks_, weights_done_;  // per stage of this rank: chunks, chunks with W done
  std::set<int> reduced_;
  std::vector<int> reduce_scatters_;
};

}  // namespace

Program build_program(const Schedule& s, const Workload& w, const StagePartition& p, const ProgramOptions& o) {
  Program prog{s, p, {}, {}};
  prog.tasks.resize(idx(s.ranks));
  prog.rank_stages.resize(idx(s.ranks));
  for (int r = 0; r < s.ranks; ++r) {
    RankExpander(s, w, p, r, prog.tasks[idx(r)], o).expand();
    std::set<int> st;
    for (const Slot& sl : s.slots[idx(r)])
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB) st.insert(sl.f.stage);
    prog.rank_stages[idx(r)].assign(st.begin(), st.end());
  }
  return prog;
}

namespace {

// Runs the tasks with unit compute time and zero communication time: each stream in order, a
// task once its deps (and, for pp_recv, the matching pp_send) are done. True if all finish.
bool task_run_finishes(const Program& p, std::string& stuck) {
  const size_t R = p.tasks.size();
  std::map<int, bool> sent;
  std::vector<std::vector<char>> done(R);
  std::vector<size_t> next_compute(R, 0), next_comm(R, 0);
  for (size_t r = 0; r < R; ++r) done[r].assign(p.tasks[r].size(), 0);
  auto advance = [&](size_t r, size_t& next, Stream stream) {
    bool moved = false;
    while (true) {
      while (next < p.tasks[r].size() && p.tasks[r][next].stream != stream) ++next;
      if (next >= p.tasks[r].size()) return moved;
      const Task& t = p.tasks[r][next];
      for (int d : t.deps)
        if (!done[r][idx(d)]) return moved;
      if (t.kind == TaskKind::pp_recv && !sent[t.message]) return moved;
      done[r][next] = 1;
      if (t.kind == TaskKind::pp_send) sent[t.message] = true;
      ++next;
      moved = true;
    }
  };
  bool progress = true;
  while (progress) {
    progress = false;
    for (size_t r = 0; r < R; ++r) {
      progress |= advance(r, next_compute[r], Stream::compute);
      progress |= advance(r, next_comm[r], Stream::comm);
    }
  }
  bool ok = true;
  for (size_t r = 0; r < R; ++r) {
    for (size_t i = 0; i < p.tasks[r].size(); ++i) {
      if (!done[r][i]) {
        stuck += "rank " + std::to_string(r) + " task " + std::to_string(i) + " (" +
                 to_string(p.tasks[r][i].kind) + ") never runs; ";
        ok = false;
        break;
      }
    }
  }
  return ok;
}

}  // namespace

std::vector<std::string> check_program(const Program& p) {
  std::vector<std::string> problems;
  const Schedule& s = p.schedule;
  // 1. Messages: one send and one receive each (none for hand-overs inside a rank).
  std::map<int, int> sends, recvs;
  for (const auto& tasks : p.tasks)
    for (const Task& t : tasks) {
      if (t.kind == TaskKind::pp_send) ++sends[t.message];
      if (t.kind == TaskKind::pp_recv) ++recvs[t.message];
    }
  for (const Message& m : s.messages) {
    const int want = m.from_rank == m.to_rank ? 0 : 1;
    if (sends[m.id] != want || recvs[m.id] != want)
      problems.push_back("message " + std::to_string(m.id) + " has " + std::to_string(sends[m.id]) +
                         " sends and " + std::to_string(recvs[m.id]) + " receives");
  }
  // 2. Every chunk: exactly one F and one B, W after a deferred B, in order on one rank.
  struct Seen {
    int rank = -1, f = -1, b = -1, w = -1;
    bool deferred = false;
  };
  std::map<std::tuple<int, int, int>, Seen> chunks;
  for (int r = 0; r < s.ranks; ++r) {
    const auto& slots = s.slots[idx(r)];
    for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
      const Slot& sl = slots[idx(i)];
      auto note = [&](const Chunk& c, int Seen::*field) {
        Seen& x = chunks[{c.path, c.micro_batch, c.stage}];
        if (x.*field >= 0) problems.push_back("chunk run twice on rank " + std::to_string(r));
        if (x.rank >= 0 && x.rank != r) problems.push_back("chunk split across ranks");
        x.rank = r;
        x.*field = i;
        if (sl.kind == SlotKind::B_input && field == &Seen::b) x.deferred = true;
      };
      if (sl.kind == SlotKind::F || sl.kind == SlotKind::FB) note(sl.f, &Seen::f);
      if (sl.kind == SlotKind::B || sl.kind == SlotKind::B_input || sl.kind == SlotKind::FB) note(sl.b, &Seen::b);
      if (sl.kind == SlotKind::W) {
        if (!sl.b.valid()) problems.push_back("W with nothing deferred on rank " + std::to_string(r));
        else note(sl.b, &Seen::w);
      }
    }
  }
  const size_t expected_chunks = idx(s.micro_batches) * idx(s.stages);
  if (chunks.size() != expected_chunks)
    problems.push_back(std::to_string(chunks.size()) + " chunks run, expected " + std::to_string(expected_chunks));
  for (const auto& [k, x] : chunks) {
    if (x.f < 0 || x.b < 0 || !(x.f < x.b)) problems.push_back("a chunk's F does not precede its B");
    if (x.deferred && !(x.w > x.b)) problems.push_back("a deferred B has no later W");
    if (!x.deferred && x.w >= 0) problems.push_back("a W for a full B");
  }
  // 3. Per-rank counts equal the reference formulas.
  for (int r = 0; r < s.ranks; ++r) {
    const SlotCounts got = count_slots(s.slots[idx(r)]);
    const SlotCounts want = schedule_traits(s.kind).expected_counts(s.ranks, s.micro_batches, r);
    if (got.forwards != want.forwards || got.backwards != want.backwards || got.weights != want.weights ||
        got.deferred != want.deferred || got.overlapped != want.overlapped ||
        got.lone_forwards != want.lone_forwards)
      problems.push_back("rank " + std::to_string(r) + ": slot counts differ from the reference formulas");
  }
  // 4. No deadlock, at slot level and at task level.
  const UnitCostRun run = run_unit_costs(s, UnitCosts{});
  if (!run.finished) problems.push_back("slot-level deadlock: " + run.stuck);
  std::string stuck;
  if (!task_run_finishes(p, stuck)) problems.push_back("task-level deadlock: " + stuck);
  return problems;
}

SlotClass slot_class(const Program& p, int rank, int slot) {
  if (slot < 0) return SlotClass::end_of_step;
  switch (p.schedule.slots.at(idx(rank)).at(idx(slot)).kind) {
    case SlotKind::F: return SlotClass::f;
    case SlotKind::B:
    case SlotKind::B_input: return SlotClass::b;
    case SlotKind::W: return SlotClass::w;
    case SlotKind::FB: return SlotClass::fb;
  }
  return SlotClass::end_of_step;
}

std::string program_digest(const Program& p) {
  std::string text;
  for (size_t r = 0; r < p.tasks.size(); ++r) {
    text += "rank " + std::to_string(r) + "\n";
    for (const Task& t : p.tasks[r])
      text += std::string(to_string(t.kind)) + ' ' + to_string(t.stream) + ' ' + std::to_string(t.slot) + ' ' +
              std::to_string(t.block) + ' ' + std::to_string(t.chunk.path) + ' ' + std::to_string(t.chunk.micro_batch) +
              ' ' + std::to_string(t.chunk.stage) + "\n";
  }
  return sha256_hex(text);
}

}  // namespace tandem
