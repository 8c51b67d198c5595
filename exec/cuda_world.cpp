#include "exec/cuda_world.h"

#include <stdexcept>

namespace tandem::cuda {

CudaWorld parse_cuda_world(const std::string& name) {
  if (name == "auto") return CudaWorld::automatic;
  if (name == "virtual") return CudaWorld::virtual_ranks;
  if (name == "nccl") return CudaWorld::nccl;
  throw std::invalid_argument("'" + name + "': expected auto, virtual or nccl");
}

}  // namespace tandem::cuda
