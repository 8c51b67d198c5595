// GpuProbe: is a usable CUDA device present? Used by GPU tests (to skip cleanly) and by
// GPU-only commands (to stop with a clear message).
#pragma once

#include <string>

namespace tandem {

struct GpuProbe {
  bool built_with_cuda = false;  // the CUDA backend was compiled in
  int devices = 0;               // usable CUDA devices
  std::string detail;            // why none, or the first device's name and compute capability
};

GpuProbe probe_gpus();

}  // namespace tandem
