// CudaWorldKind: which kind of world (the job's ranks and their communicators, as comm::World) the
// CUDA backend builds — virtual ranks on one GPU or NCCL with one rank per GPU, or the automatic
// choice between them (exec/backends/cuda/cuda_executor.h says what each is). `--cuda-world` of
// `tandem execute --backend cuda`. Here, apart from the backend, so the CLI can parse the option
// without loading the CUDA module.
#pragma once

#include <string>

namespace tandem::cuda {

enum class CudaWorldKind { automatic, virtual_ranks, nccl };

// "auto" | "virtual" | "nccl"; std::invalid_argument naming the value otherwise.
CudaWorldKind parse_cuda_world_kind(const std::string& name);

}  // namespace tandem::cuda
