// The CUDA backend module's one exported symbol (exec/cuda_backend.h): the table of its entry
// points. Everything else in libtandem_cuda.so is hidden (-fvisibility=hidden here,
// --exclude-libs for the static libraries it links), so its copies of tandem's libraries never
// interpose on the executable's.
#include "exec/cuda_backend.h"

#include "exec/backends/cuda/cuda_executor.h"

namespace tandem::cuda {
namespace {

runtime::ExecResult execute(const runtime::RunSpec& spec, const runtime::ExecOptions& o, CudaWorldKind world,
                            std::string& failure) {
  // ExecFailure is this module's own copy of the type: its message crosses as a value.
  try {
    return execute_cuda(spec, o, world);
  } catch (const runtime::ExecFailure& e) {
    failure = e.what();
    return {};
  }
}

const CudaBackend kTable = [] {
  CudaBackend t;
  t.abi = kCudaBackendAbi;
  t.size = sizeof(CudaBackend);
  t.query_devices = &query_devices;
  t.resolve_world = &resolve_cuda_world_kind;
  t.execute = &execute;
  t.bench_device = &bench_device;
  t.bench_gemm = &bench_gemm;
  t.bench_quant = &bench_quant;
  t.bench_moe_layer = &bench_moe_layer;
  return t;
}();

}  // namespace
}  // namespace tandem::cuda

extern "C" __attribute__((visibility("default"))) const tandem::CudaBackend* tandem_cuda_backend() {
  return &tandem::cuda::kTable;
}
