// The CPU backend's executor: runs training steps of a scenario, every rank on the CPU.
//
// One RankRunner per world rank this process hosts (all of them in-process; a share of them under
// mpirun, exec/comm make_world decides), each driven by the interpreter on its own two threads.
// Per step: the ranks run their Programs, the losses are gathered over the world (every rank
// contributes its last stage's micro-batch losses; summed in (replica, micro-batch) order), and
// with check_reference the reduced gradient shards of step 1 are compared with run_reference's.
//
// A rank that fails stops the whole job: its communicator is aborted (every peer wakes with an
// error naming it), and execute() throws ExecFailure with the first failure's message (rank, task).
#pragma once

#include "exec/runtime/executor.h"
#include "exec/runtime/run_spec.h"

namespace tandem::runtime {

ExecResult execute(const RunSpec& spec, const ExecOptions& o);

}  // namespace tandem::runtime
