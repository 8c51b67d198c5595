// Counts CUDA devices without failing when there is no driver or no GPU.
#pragma once

#include <string>

namespace tandem::cuda {

struct DeviceQuery {
  int count = 0;
  std::string detail;  // the CUDA error when count is 0, else "NAME (sm_XY)"
  double memory_bytes = 0;  // device 0's global memory (0 when count is 0)
};

DeviceQuery query_devices();

}  // namespace tandem::cuda
