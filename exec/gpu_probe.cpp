#include "exec/gpu_probe.h"

#include "exec/cuda_backend.h"

namespace tandem {

GpuProbe probe_gpus() {
  GpuProbe p;
  p.built_with_cuda = cuda_backend_built();
  const CudaBackendLoad& load = load_cuda_backend();
  if (!load.backend) {
    p.detail = load.why;
    return p;
  }
  p.backend_loaded = true;
  const cuda::DeviceQuery q = load.backend->query_devices();
  p.devices = q.count;
  p.detail = q.detail;
  return p;
}

}  // namespace tandem
