#include "exec/gpu_probe.h"

#if TANDEM_HAVE_CUDA
#include "exec/cuda/device_query.h"
#endif

namespace tandem {

GpuProbe probe_gpus() {
  GpuProbe p;
#if TANDEM_HAVE_CUDA
  p.built_with_cuda = true;
  const cuda::DeviceQuery q = cuda::query_devices();
  p.devices = q.count;
  p.detail = q.detail;
#else
  p.detail = "tandem was built without the CUDA backend (TANDEM_CUDA=OFF or no nvcc)";
#endif
  return p;
}

}  // namespace tandem
