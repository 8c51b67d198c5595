#include "exec/backends/cuda/cuda_executor.h"

#include <algorithm>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "common/signed_index.h"
#include "exec/comm/world.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_query.h"
#include "exec/backends/cuda/comm/nccl_comm.h"
#include "exec/backends/cuda/device_backend.h"
#include "exec/backends/cuda/comm/virtual_ranks.h"
#include "exec/runtime/rank_runner.h"
#include "exec/runtime/step_loop.h"

namespace tandem::cuda {

namespace {

using runtime::ExecFailure;

// The ranks of the job this process runs and their device communicators, whichever world holds them.
struct DeviceWorld {
  std::string description;
  comm::World* host = nullptr;                 // the host world (failure, host communicators)
  std::vector<int> local;                      // world ranks run here, ascending
  std::function<DeviceCommunicator&(int)> comm;
  bool one_device = false;                     // every local rank on the same GPU
  int device = 0;                              // the GPU, when one_device

  std::unique_ptr<VirtualRankWorld> virtual_world;
#ifdef TANDEM_HAVE_NCCL
  std::unique_ptr<NcclLocalWorld> nccl_local;
  std::unique_ptr<comm::World> mpi_host;
  std::vector<std::unique_ptr<NcclCommunicator>> nccl_ranks;  // indexed like `local`

  DeviceWorld() = default;
  DeviceWorld(const DeviceWorld&) = delete;
  DeviceWorld& operator=(const DeviceWorld&) = delete;
  // ncclCommDestroy is an intra-node collective (nccl_comm.h): this process's ranks are destroyed
  // concurrently, one thread each (as NcclLocalWorld does), before the host world they use.
  ~DeviceWorld() {
    if (nccl_ranks.size() > 1) {
      std::vector<std::thread> threads;
      for (auto& r : nccl_ranks) threads.emplace_back([&r] { r.reset(); });
      for (auto& t : threads) t.join();
    }
  }
#endif
};

void make_virtual(DeviceWorld& w, int ranks, const comm::CommOptions& co) {
  w.virtual_world = std::make_unique<VirtualRankWorld>(ranks, 0, co);
  w.description = w.virtual_world->describe();
  w.host = &w.virtual_world->host_world();
  w.local = w.host->local_ranks();
  w.comm = [&w](int g) -> DeviceCommunicator& { return w.virtual_world->comm(g); };
  w.one_device = true;
  w.device = 0;
}

#ifdef TANDEM_HAVE_NCCL
void make_nccl(DeviceWorld& w, int ranks, int devices, const comm::CommOptions& co) {
  if (comm::launched_under_mpi()) {
    w.mpi_host = comm::make_world(ranks, co);
    w.host = w.mpi_host.get();
    w.local = w.host->local_ranks();
    // One NCCL rank per world rank: init_rank is a collective over the host world, so every
    // local rank calls it from its own thread. GPU = world rank mod the GPUs this process sees
    // (world ranks are numbered node by node).
    w.nccl_ranks.resize(w.local.size());
    std::vector<std::exception_ptr> errors(w.local.size());
    std::vector<std::thread> threads;
    for (std::size_t k = 0; k < w.local.size(); ++k)
      threads.emplace_back([&, k] {
        try {
          w.nccl_ranks[k] = NcclCommunicator::init_rank(w.host->comm(w.local[k]), w.local[k] % devices, co);
        } catch (...) {
          errors[k] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    w.description = w.nccl_ranks.front()->describe() + " (NCCL, one rank per GPU, " + w.host->describe() + ")";
    w.comm = [&w](int g) -> DeviceCommunicator& {
      const auto it = std::find(w.local.begin(), w.local.end(), g);
      return *w.nccl_ranks[idx(it - w.local.begin())];
    };
    return;
  }
  if (devices < ranks)
    throw ExecFailure("--cuda-world nccl: " + std::to_string(ranks) + " ranks need " + std::to_string(ranks) +
                      " GPUs in this process, " + std::to_string(devices) +
                      " visible (run under mpirun / srun for more nodes, or use --cuda-world virtual)");
  std::vector<int> gpus(idx(ranks));
  for (int g = 0; g < ranks; ++g) gpus[idx(g)] = g;
  w.nccl_local = std::make_unique<NcclLocalWorld>(gpus, co);
  w.description = w.nccl_local->describe();
  w.host = &w.nccl_local->host_world();
  w.local = w.host->local_ranks();
  w.comm = [&w](int g) -> DeviceCommunicator& { return w.nccl_local->comm(g); };
  w.one_device = ranks == 1;
}
#endif

void make_world(DeviceWorld& w, CudaWorldKind kind, int ranks, int devices, const comm::CommOptions& co) {
  kind = resolve_cuda_world_kind(kind);
  if (kind == CudaWorldKind::virtual_ranks) return make_virtual(w, ranks, co);
#ifdef TANDEM_HAVE_NCCL
  make_nccl(w, ranks, devices, co);
#else
  (void)devices;
  throw ExecFailure("--cuda-world nccl: this build has no NCCL (the CUDA toolkit's nccl.h / libnccl were not found "
                    "at configure time); use --cuda-world virtual");
#endif
}

}  // namespace

CudaWorldKind resolve_cuda_world_kind(CudaWorldKind kind) {
  // nccl only where there is no other way (several processes): on one process the virtual ranks'
  // eager sends cannot stall the way NCCL's rendezvous can (exec/backends/cuda/README.md, known doubts).
  if (kind != CudaWorldKind::automatic) return kind;
  return nccl_built() && comm::launched_under_mpi() ? CudaWorldKind::nccl : CudaWorldKind::virtual_ranks;
}

runtime::ExecResult execute_cuda(const runtime::RunSpec& spec, const runtime::ExecOptions& o, CudaWorldKind kind) {
  const DeviceQuery q = query_devices();
  if (q.count == 0) throw ExecFailure("no CUDA device is present (" + q.detail + ")");
  if (o.check_reference)
    throw ExecFailure("check_reference is the CPU backend's (the CUDA backend is checked against the CPU backend by "
                      "the GPU check exec_cuda)");
  comm::CommOptions co;
  co.timeout = o.timeout;
  co.fault = o.fault;

  DeviceWorld w;
  runtime::ExecResult result;
  // Runners and events are destroyed before the world (declared after it); the origin event too.
  struct Origin {
    cudaEvent_t event = nullptr;
    ~Origin() {
      if (event) cudaEventDestroy(event);
    }
  } origin;
  std::unique_ptr<Stream> origin_stream;
  std::vector<std::unique_ptr<DeviceRankRunner>> runners;
  try {
    make_world(w, kind, spec.world_size(), q.count, co);
    for (int g : w.local) runners.push_back(std::make_unique<DeviceRankRunner>(spec, g, w.comm(g)));
    if (w.one_device) {
      check(cudaSetDevice(w.device), "cudaSetDevice");
      origin_stream = std::make_unique<Stream>();
      check(cudaEventCreate(&origin.event), "cudaEventCreate (step origin)");
      for (auto& r : runners) r->backend().set_step_origin(origin.event);
    }
  } catch (const ExecFailure&) {
    throw;
  } catch (const std::exception& e) {
    throw ExecFailure(std::string("cannot start the CUDA world: ") + e.what());
  }
  result.world = w.description;
  result.leader = std::find(w.local.begin(), w.local.end(), 0) != w.local.end();
  result.trace.engine = "exec";
  result.trace.program = program_digest(spec.program);
  result.trace.scenario = spec.scenario.name;

  runtime::StepHooks<DeviceRankRunner> hooks;
  hooks.timings = [](DeviceRankRunner& r, std::vector<runtime::TaskTiming>) { return r.backend().timings(); };
  hooks.before_step = [&](int) {
    if (!origin.event) return;
    check(cudaSetDevice(w.device), "cudaSetDevice");
    check(cudaEventRecord(origin.event, origin_stream->get()), "cudaEventRecord (step origin)");
  };
  try {
    runtime::run_steps(spec, o, runners, *w.host, std::nullopt, hooks, result);
  } catch (const CudaError& e) {
    throw ExecFailure(std::string("CUDA error: ") + e.what());
  }
  return result;
}

}  // namespace tandem::cuda
