// GpuProbe: is a usable CUDA device present? Used by GPU tests (to skip cleanly) and by
// GPU-only commands (to stop with a clear message). Asks the CUDA backend module
// (exec/cuda_backend.h), which it loads on first use.
#pragma once

#include <string>

namespace tandem {

struct GpuProbe {
  bool built_with_cuda = false;  // the CUDA backend was compiled
  bool backend_loaded = false;   // and its module loaded (false: detail says why not)
  int devices = 0;               // usable CUDA devices
  std::string detail;            // why none, or the first device's name and compute capability
};

GpuProbe probe_gpus();

}  // namespace tandem
