#include "exec/cuda_world_kind.h"

#include <stdexcept>

namespace tandem::cuda {

CudaWorldKind parse_cuda_world_kind(const std::string& name) {
  if (name == "auto") return CudaWorldKind::automatic;
  if (name == "virtual") return CudaWorldKind::virtual_ranks;
  if (name == "nccl") return CudaWorldKind::nccl;
  throw std::invalid_argument("'" + name + "': expected auto, virtual or nccl");
}

}  // namespace tandem::cuda
