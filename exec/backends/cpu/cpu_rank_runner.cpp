// The CPU backend's rank runner: RankRunner's one instantiation in tandem_runtime.
#include "exec/backends/cpu/cpu_backend.h"
#include "exec/runtime/rank_runner_impl.h"

namespace tandem::runtime {

template class RankRunner<CpuBackend>;
template RankRunner<CpuBackend>::RankRunner(const RunSpec&, int, comm::Communicator&);

}  // namespace tandem::runtime
