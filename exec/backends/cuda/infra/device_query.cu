#include "exec/backends/cuda/infra/device_query.h"

#include <cuda_runtime.h>

namespace tandem::cuda {

DeviceQuery query_devices() {
  DeviceQuery q;
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    q.detail = std::string("no CUDA device: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky error
    return q;
  }
  q.count = n;
  if (n == 0) {
    q.detail = "no CUDA device";
    return q;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
    q.detail = std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
    q.memory_bytes = static_cast<double>(prop.totalGlobalMem);
  }
  return q;
}

}  // namespace tandem::cuda
