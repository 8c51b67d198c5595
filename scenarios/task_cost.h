// TaskCost: what one Program task costs before the network has its say — the one place that
// turns a task's work (TaskWork) into seconds with the calibrated cost model, for the simulator
// and for `tandem calibrate`, which compares it with measured traces.
//
// Compute tasks run their GEMMs and attention on the SMs the scenario gives compute
// (Scenario::gemm_sms: all but comm.sms when the program has all-to-alls).
//
// All-to-all tasks: `seconds` are the kernels on the comm stream before the transfer (a cast of
// the gradient to the wire format, confined to the communication SMs; DeepEP's layout/notify
// kernels, which also wait for the EP group's slowest member); `transfer_scale` stretches the
// transfer the network model times — fewer SMs than saturate the links drive proportionally less
// bandwidth, and in an overlapped F&B slot GEMMs share the GPU (the calibration's in-training
// factor).
#pragma once

#include "scenarios/program.h"
#include "scenarios/scenario.h"
#include "scenarios/task_work.h"
#include "sim/compute_cost.h"

namespace tandem {

struct TaskCost {
  double seconds = 0;         // compute tasks: the whole task; comm tasks: before the transfer
  double routed_seconds = 0;  // the part of `seconds` that scales with the GPU's routed rows
  double transfer_scale = 1;  // all-to-all tasks
};

// SMs the comm stream's own kernels are confined to (0: the whole GPU, when no SMs are set
// aside for communication).
int64_t comm_stream_sms(const Scenario& s);

// The all-to-all kind of a task, if it is one.
bool a2a_kind(TaskKind k, A2AKind* out);

// Whether the task runs in an overlapped F&B slot.
bool in_overlapped_slot(const Program& p, int rank, const Task& t);

TaskCost task_cost(const Scenario& s, const Program& p, int rank, const Task& t, const TaskWork& work,
                   const ComputeCostModel& costs);

}  // namespace tandem
