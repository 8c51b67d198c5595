// ProgramTimeline: a Program played with given task durations and no network model — the
// engines' semantics without SimGrid: each rank runs its compute and comm streams in Program
// order, a task starting when its stream is free and its dependencies are done; a pp_send is
// posted and costs its stream nothing; its pp_recv completes `transfer` seconds after both the
// send and the receive have been posted. Collectives take their given durations (every member
// of an EP or DP group is assumed to arrive together, as in the replicated tier).
//
// Fast (no simulator, no flows): what the stage balancer compares candidate partitions with.
#pragma once

#include <functional>
#include <vector>

#include "scenarios/program.h"

namespace tandem {

struct TaskTimes {
  std::function<double(int rank, int task)> duration;  // every task but pp_recv
  std::function<double(int rank, int task)> transfer;  // pp_recv: the transfer once both ends posted
};

struct ProgramTimeline {
  bool finished = false;
  double step_time = 0;
  std::vector<std::vector<double>> start, end;  // per rank, per task
};

ProgramTimeline play_program(const Program& p, const TaskTimes& t);

}  // namespace tandem
