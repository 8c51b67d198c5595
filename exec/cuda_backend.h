// The CUDA backend as a table of entry points, loaded on first use.
//
// Why: cuBLAS, cuBLASLt, NCCL and the CUDA runtime are ~200 MB of shared libraries whose
// relocations cost ~0.1 s warm and ~1 s cold at every start, and most commands (describe,
// simulate, plan, ...) never touch a GPU. So the backend is built as a module (libtandem_cuda.so,
// exec/backends/cuda/backend_module.cpp) that links the CUDA libraries and its own copy of the executor
// it needs; the `tandem` binary links none of them and opens the module with dlopen() only when a
// command asks for a GPU (`execute --backend cuda`, `bench`, probe_gpus()).
//
// Contract:
// - load_cuda_backend() opens the module once per process and returns its table, or an error
//   saying why not (a build without the backend, a missing or unloadable module, a module of
//   another build). It never throws and never exits; the caller names the option that asked.
// - The module is looked for in $TANDEM_CUDA_MODULE when set (CTest sets it for test binaries),
//   else beside the running executable (build/cli/ in a build tree, bin/ in scripts/gpu-pack.sh's
//   pack).
// - The table's functions are those of exec/backends/cuda (infra/device_query.h, bench.h,
//   cuda_executor.h) with one change: execute returns a failed rank's message as a value
//   (`failure`), because runtime::ExecFailure is the module's own copy of the type. The bench
//   functions throw std::exception subclasses (CudaError, LtError), caught as std::exception.
// - The module is never closed: its static state (an MPI session, NCCL communicators) lives until
//   exit, as when it was linked in.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "exec/backends/cuda/bench.h"
#include "exec/backends/cuda/infra/device_query.h"
#include "exec/cuda_world_kind.h"
#include "exec/runtime/executor.h"
#include "exec/runtime/run_spec.h"

namespace tandem {

// Bumped whenever the table or a type it passes changes; a module of another build is refused.
inline constexpr int kCudaBackendAbi = 1;

struct CudaBackend {
  int abi = 0;               // kCudaBackendAbi of the module's build
  std::size_t size = 0;      // sizeof(CudaBackend) in the module's build
  cuda::DeviceQuery (*query_devices)() = nullptr;
  cuda::CudaWorldKind (*resolve_world)(cuda::CudaWorldKind kind) = nullptr;
  // execute_cuda; a failed run leaves `failure` non-empty (the ExecFailure's message).
  runtime::ExecResult (*execute)(const runtime::RunSpec& spec, const runtime::ExecOptions& o, cuda::CudaWorldKind world,
                                 std::string& failure) = nullptr;
  cuda::BenchDevice (*bench_device)() = nullptr;
  std::vector<cuda::GemmBenchRow> (*bench_gemm)(const std::vector<cuda::GemmShape>& shapes, bool include_wgrad_mode,
                                                int sm_count_target, const cuda::BenchTiming& t) = nullptr;
  std::vector<cuda::QuantBenchRow> (*bench_quant)(int rows, int cols, const cuda::BenchTiming& t) = nullptr;
  cuda::MoeLayerResult (*bench_moe_layer)(const cuda::MoeLayerConfig& c, const cuda::BenchTiming& t) = nullptr;
};

// The name of the module's one exported symbol: `const CudaBackend* tandem_cuda_backend()`.
inline constexpr const char* kCudaBackendEntry = "tandem_cuda_backend";

// Whether this build compiled the CUDA backend (nvcc found, TANDEM_CUDA=ON).
bool cuda_backend_built();

struct CudaBackendLoad {
  const CudaBackend* backend = nullptr;  // null: see why
  std::string why;                       // e.g. "this build has no CUDA backend (...)"
};

// The backend's table, or why there is none (see the contract above). The same answer every call.
const CudaBackendLoad& load_cuda_backend();

}  // namespace tandem
