#include "exec/comm/world.h"

#include <cstdlib>
#include <string>

#include "exec/comm/in_process.h"
#ifdef TANDEM_HAVE_MPI
#include "exec/comm/mpi.h"
#endif

namespace tandem::comm {

namespace {
// The number of processes the launcher started, 0 when no launcher started us, -1 when one did but
// did not say how many. mpirun / mpiexec of Open MPI set OMPI_COMM_WORLD_SIZE; MPICH's hydra and
// `srun --mpi=pmi2` set PMI_SIZE; a PMIx launch (`srun --mpi=pmix`, PRRTE) sets PMIX_RANK, and
// under srun the step's task count is SLURM_STEP_NUM_TASKS.
int launcher_processes() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"}) {
    if (const char* v = std::getenv(var)) return std::atoi(v);
  }
  if (std::getenv("PMIX_RANK")) {
    if (const char* v = std::getenv("SLURM_STEP_NUM_TASKS")) return std::atoi(v);
    return -1;
  }
  return 0;
}
}  // namespace

bool launched_under_mpi() { return launcher_processes() != 0; }

std::unique_ptr<World> make_world(int ranks, const CommOptions& options) {
  if (launched_under_mpi()) {
#ifdef TANDEM_HAVE_MPI
    return std::make_unique<MpiWorld>(ranks, options);
#else
    // An unknown count (-1) is refused too: if there were several processes, each would run the
    // whole job.
    const int processes = launcher_processes();
    if (processes != 1) {
      const std::string count = processes > 0 ? std::to_string(processes) : "an unknown number of";
      throw CommError(CommErrorKind::transport, -1, "make_world", "", {}, -1,
                      "started by an MPI launcher with " + count +
                          " processes, but this build has no MPI (TANDEM_HAVE_MPI is off): each process "
                          "would run the whole job; rebuild with MPI or run one process without the launcher");
    }
#endif
  }
  return std::make_unique<InProcessWorld>(ranks, options);
}

}  // namespace tandem::comm
