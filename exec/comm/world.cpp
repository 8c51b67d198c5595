#include "exec/comm/world.h"

#include <cstdlib>
#include <string>

#include "exec/comm/in_process.h"
#ifdef TANDEM_HAVE_MPI
#include "exec/comm/mpi.h"
#endif

namespace tandem::comm {

namespace {
// The number of processes the launcher started (Open MPI, then PMI launchers), 0 if none.
int launcher_processes() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  return 0;
}
}  // namespace

bool launched_under_mpi() { return launcher_processes() > 0; }

std::unique_ptr<World> make_world(int ranks, const CommOptions& options) {
  if (launched_under_mpi()) {
#ifdef TANDEM_HAVE_MPI
    return std::make_unique<MpiWorld>(ranks, options);
#else
    if (launcher_processes() > 1) {
      throw CommError(CommErrorKind::transport, -1, "make_world", "", {}, -1,
                      "started by an MPI launcher with " + std::to_string(launcher_processes()) +
                          " processes, but this build has no MPI (TANDEM_HAVE_MPI is off): each process "
                          "would run the whole job; rebuild with MPI or run one process");
    }
#endif
  }
  return std::make_unique<InProcessWorld>(ranks, options);
}

}  // namespace tandem::comm
