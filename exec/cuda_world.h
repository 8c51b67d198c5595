// CudaWorld: how `tandem execute --backend cuda` lays the job's ranks on GPUs
// (exec/backends/cuda/cuda_executor.h says what each world is). Here, apart from the backend, so
// the CLI can parse --cuda-world without loading the CUDA module.
#pragma once

#include <string>

namespace tandem::cuda {

enum class CudaWorld { automatic, virtual_ranks, nccl };

// "auto" | "virtual" | "nccl"; std::invalid_argument naming the value otherwise.
CudaWorld parse_cuda_world(const std::string& name);

}  // namespace tandem::cuda
