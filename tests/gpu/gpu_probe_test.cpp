// Fails when the CUDA backend was built but its module (exec/cuda_backend.h) does not load; skips
// (exit 77) without a CUDA device; with one, checks that the device is a Hopper (sm_90), the
// architecture the CUDA backend is built for.
#include <cstdio>

#include "exec/gpu_probe.h"

int main() {
  const tandem::GpuProbe p = tandem::probe_gpus();
  if (p.built_with_cuda && !p.backend_loaded) {
    // The backend was built: its module must load (a missing library would hide every GPU check).
    std::printf("FAIL: %s\n", p.detail.c_str());
    return 1;
  }
  if (p.devices == 0) {
    std::printf("SKIP: %s\n", p.detail.c_str());
    return 77;
  }
  std::printf("found %d device(s): %s\n", p.devices, p.detail.c_str());
  if (p.detail.find("sm_90") == std::string::npos) {
    std::printf("FAIL: the CUDA backend is built for sm_90a only\n");
    return 1;
  }
  return 0;
}
