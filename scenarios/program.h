// Program: for each pipeline rank, the ordered tasks it runs — the one input of both engines.
//
// Built from a Schedule (which chunk, when) and the workload (what a chunk is made of). Each slot
// expands into sub-ops per layer of its stage: forward = attention -> dispatch -> mlp -> combine
// (dense layers: attention -> mlp); backward = combine -> mlp -> dispatch -> attention, with the
// weight-gradient parts (mlp_w, attn_w) inside the slot for a full B, or in a later W slot. An
// overlapped F&B slot interleaves the two chunks layer by layer in the technical report's order:
//   compute: MLP(B) MLP(W) MLP(F) ATTN(B) ATTN(W) ATTN(F)   comm: DISPATCH(F) DISPATCH(B) COMBINE(F) PP COMBINE(B)
// as the profile trace shows it per layer: combine(B) attn(F) mlp(B) dispatch(F) dispatch(B) mlp(W)
// mlp(F) attn(B) attn(W) combine(F).
//
// Tasks run on a compute or a comm stream of their rank, each stream in list order; `deps` name
// earlier tasks of the rank that must have finished. pp_send/pp_recv pair through a message id.
// dispatch/combine are all-to-alls with the same rank of the other pipelines of the EP group;
// dp_reduce_scatter/dp_all_gather are ZeRO-1 collectives over the data-parallel copies (a
// reduce-scatter with a valid chunk.stage covers that stage only: ProgramOptions::dp_overlap). Neither
// engine reorders anything.
#pragma once

#include <string>
#include <vector>

#include "common/gpu_time.h"
#include "models/workload.h"
#include "scenarios/schedules/schedule.h"
#include "scenarios/stage_partition.h"

namespace tandem {

enum class TaskKind {
  attn_f, attn_b, attn_w, dispatch_f, dispatch_b, mlp_f, mlp_b, mlp_w, combine_f, combine_b,
  loss, pp_send, pp_recv, dp_reduce_scatter, dp_all_gather, optimizer
};
const char* to_string(TaskKind k);

enum class Stream { compute, comm };
const char* to_string(Stream s);

enum class Group { none, ep, dp };  // the peers of a collective

struct Task {
  TaskKind kind = TaskKind::attn_f;
  Stream stream = Stream::compute;
  Group group = Group::none;
  int slot = -1;     // schedule slot; -1 for the end-of-step DP and optimizer tasks
  Chunk chunk;       // path, micro-batch, stage, phase (invalid micro_batch for end-of-step tasks)
  int block = -1;    // workload block index, -1 for pp/dp/optimizer tasks
  std::vector<int> deps;  // indices of earlier tasks of this rank
  int message = -1;  // pp_send / pp_recv: Schedule message id
  int peer = -1;     // pp_send / pp_recv: the other rank
};

struct Program {
  Schedule schedule;
  StagePartition partition;
  std::vector<std::vector<Task>> tasks;  // per rank
  std::vector<std::vector<int>> rank_stages;  // stages each rank holds (in phase order)
};

struct ProgramOptions {
  // ZeRO-1 overlap: each stage's gradient reduce-scatter goes on the comm stream right after the
  // slot that completes the stage's last weight-gradient pass, so it overlaps the rank's remaining
  // passes; otherwise one reduce-scatter after all of them. The optimizer step and the parameter
  // all-gather stay at the end of the step.
  bool dp_overlap = false;
};

Program build_program(const Schedule& s, const Workload& w, const StagePartition& p, const ProgramOptions& o = {});

// The category of a rank's schedule slot (SlotClass::end_of_step for slot -1), for GpuTime.
SlotClass slot_class(const Program& p, int rank, int slot);

// A digest (SHA-256, hex) of every rank's task identities in order — kind, stream, slot, block,
// chunk: two traces with the same digest ran the same program, so their tasks align one to one.
std::string program_digest(const Program& p);

// Static checks of a generated program; returns the problems found (empty: all good).
// Every message has one send and one receive; every chunk has one F, one B and (if deferred)
// one W, in that order on its rank; per-rank counts equal the reference formulas; a
// dependency-driven run of the slots and of the tasks finishes (no deadlock).
std::vector<std::string> check_program(const Program& p);

}  // namespace tandem
