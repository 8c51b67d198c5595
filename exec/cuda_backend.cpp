#include "exec/cuda_backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>

#include "common/signed_index.h"

namespace tandem {
namespace {

#ifdef TANDEM_CUDA_MODULE_FILE
// The directory of the running executable (/proc/self/exe), with a trailing '/'; "" if unknown.
std::string executable_dir() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "";
  const std::string path(buf, idx(n));
  const std::size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

CudaBackendLoad open_module() {
  CudaBackendLoad load;
  const char* override_path = std::getenv("TANDEM_CUDA_MODULE");
  const std::string path = override_path && *override_path ? override_path : executable_dir() + TANDEM_CUDA_MODULE_FILE;
  // RTLD_NOW: a missing symbol is reported here, not as a crash in the middle of a run.
  // RTLD_LOCAL: the module's copies of tandem's libraries stay its own.
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* err = dlerror();
    load.why = "cannot load the CUDA backend module " + path + ": " + (err ? err : "unknown error");
    return load;
  }
  using Entry = const CudaBackend* (*)();
  const auto entry = reinterpret_cast<Entry>(dlsym(handle, kCudaBackendEntry));
  if (!entry) {
    load.why = path + " is not a tandem CUDA backend module (no symbol " + kCudaBackendEntry + ")";
    return load;
  }
  const CudaBackend* table = entry();
  if (!table || table->abi != kCudaBackendAbi || table->size != sizeof(CudaBackend)) {
    load.why = path + " was built from another version of tandem (rebuild it with this binary)";
    return load;
  }
  load.backend = table;
  return load;
}
#endif

}  // namespace

bool cuda_backend_built() {
#ifdef TANDEM_CUDA_MODULE_FILE
  return true;
#else
  return false;
#endif
}

const CudaBackendLoad& load_cuda_backend() {
#ifdef TANDEM_CUDA_MODULE_FILE
  static const CudaBackendLoad load = open_module();
#else
  static const CudaBackendLoad load{nullptr,
                                    "this build has no CUDA backend (configured with TANDEM_CUDA=OFF or without nvcc)"};
#endif
  return load;
}

}  // namespace tandem
