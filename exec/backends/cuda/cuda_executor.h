// execute_cuda: `tandem execute --backend cuda` — training steps of a scenario on GPUs, each world
// rank a RankRunner<DeviceBackend> (device_backend.h) driven by the same interpreter and step
// loop as the CPU backend (exec/runtime/step_loop.h), so the two report a step the same way and
// their losses compare directly.
//
// Worlds (CudaWorldKind, exec/cuda_world_kind.h):
//   virtual_ranks  every rank of the job in this process on ONE GPU (VirtualRankWorld): how a
//                  multi-rank schedule runs on a single-GPU machine; all ranks share the device's
//                  SMs, so times are not those of a cluster, but the per-rank program is.
//   nccl           one rank per GPU through NCCL: all ranks in this process when it sees at least
//                  world-size GPUs (NcclLocalWorld, ncclCommInitAll); under mpirun / srun (the host
//                  world is MPI, exec/comm/world.h) this process's ranks, each on GPU
//                  (node-local rank) through NcclCommunicator::init_rank.
//   automatic      nccl when the build has NCCL and this process runs under an MPI launcher (no
//                  other way to reach the other processes); otherwise virtual_ranks. NCCL's p2p is
//                  a rendezvous on the GPU and the Programs are checked for eager sends, so the nccl
//                  world is the untested path (exec/backends/cuda/README.md, known doubts).
//
// Trace: each task's start and end are CUDA events on its stream (device_backend.h), in seconds
// from one origin per device (virtual ranks: one event every rank's streams wait on, so the ranks
// line up).
//
// Errors: ExecFailure — no CUDA device present, NCCL asked for but not built or too few GPUs, a
// rank's task failing (named as on the CPU), a CUDA error. check_reference is the CPU backend's
// (the CUDA backend is checked against the CPU backend by the GPU check `exec_cuda`).
#pragma once

#include <string>

#include "exec/cuda_world_kind.h"
#include "exec/runtime/executor.h"
#include "exec/runtime/run_spec.h"

namespace tandem::cuda {

// The world `kind` runs on: automatic resolved as above (virtual_ranks or nccl).
CudaWorldKind resolve_cuda_world_kind(CudaWorldKind kind);

runtime::ExecResult execute_cuda(const runtime::RunSpec& spec, const runtime::ExecOptions& o,
                                 CudaWorldKind world = CudaWorldKind::automatic);

}  // namespace tandem::cuda
