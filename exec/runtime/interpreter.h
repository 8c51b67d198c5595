// The program interpreter: runs one rank's task list (scenarios/program.h) exactly as written.
//
// Two threads, one per stream: the compute thread runs the rank's compute tasks in list order, the
// comm thread its comm tasks in list order. A task starts once every task in its `deps` has
// finished (deps are earlier tasks of the same rank). Nothing is reordered, skipped or merged:
// what the task *does* is the runner's business (TaskRunner), the interpreter only decides when.
//
// Failure: the first task that throws stops the rank. Its error names the rank, the task index,
// kind, micro-batch and stage; `on_failure` is called once (the executor aborts the communicator
// there, so the other stream and every peer blocked on this rank wake up instead of hanging), and
// the other thread stops at its next task boundary. run_rank_program then throws RankFailure.
#pragma once

#include <chrono>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "scenarios/program.h"

namespace tandem::runtime {

// What a task does. Called from the compute or the comm thread; different tasks of one rank run
// concurrently (one per stream), so implementations touch only what the task's deps protect.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  virtual void run(int task_index, const Task& task) = 0;
};

// Clock times of one task, seconds since the `origin` passed to run_rank_program.
struct TaskTiming {
  int task = -1;
  double start = 0, end = 0;
};

class RankFailure : public std::runtime_error {
 public:
  RankFailure(int rank, int task, const std::string& what)
      : std::runtime_error(what), rank_(rank), task_(task) {}
  int rank() const { return rank_; }
  int task() const { return task_; }

 private:
  int rank_, task_;
};

// "attn_f mb 3 stage 1 block 4" — how errors and labels name a task.
std::string describe_task(const Task& t);

// Runs every task of `tasks` (one rank's list) on two threads; returns the timings in task order.
// Throws RankFailure naming the first task that failed.
std::vector<TaskTiming> run_rank_program(int rank, const std::vector<Task>& tasks, TaskRunner& runner,
                                         std::chrono::steady_clock::time_point origin,
                                         const std::function<void(const std::string&)>& on_failure);

}  // namespace tandem::runtime
