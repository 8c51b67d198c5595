// World: the ranks of one job, as this process sees them, and the factory that picks the world.
//
// A World owns one Communicator per rank it hosts. The in-process world (in_process.h) hosts all
// ranks as threads of this process; the MPI world (mpi.h, built with TANDEM_HAVE_MPI) spreads them
// over the processes of `mpirun -np P`, R/P contiguous ranks each. The executor asks the world which
// ranks are local, runs one thread per local rank, and gives each its comm(rank).
//
//   auto world = tandem::comm::make_world(program.tasks.size(), {.timeout = 30s});
//   for (int r : world->local_ranks()) threads.emplace_back([&, r] { run_rank(r, world->comm(r)); });
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "exec/comm/communicator.h"

namespace tandem::comm {

struct Failure {
  int rank = -1;       // the rank that failed first (as seen by this process)
  std::string reason;  // its error message
};

class World {
 public:
  virtual ~World() = default;

  virtual int size() const = 0;                          // ranks in the job
  virtual const std::vector<int>& local_ranks() const = 0;  // ranks this process hosts, ascending
  virtual Communicator& comm(int rank) = 0;               // rank must be local
  virtual std::string describe() const = 0;               // e.g. "in-process, 8 ranks"
  // The world's first failure as seen by this process, if any.
  virtual std::optional<Failure> failure() const = 0;
  // Messages that reached this process's ranks and were never received, one line each
  // ("rank 0 -> rank 1: send "pp_send F mb 3" tag 7, 64 bytes, never received"), and forgets
  // them. Call once the ranks are done; after a clean run the list is empty.
  virtual std::vector<std::string> undelivered() = 0;
};

// True when this process was started by an MPI launcher: OMPI_COMM_WORLD_SIZE (Open MPI's mpirun),
// PMI_SIZE (MPICH's hydra, srun --mpi=pmi2) or PMIX_RANK (srun --mpi=pmix, PRRTE) is set.
bool launched_under_mpi();

// The world for a job of `ranks` ranks: MPI when launched under an MPI launcher (the ranks split
// over the processes, ranks % processes == 0), in-process otherwise. Under a launcher without MPI
// support built in, a single process falls back to in-process and several processes (or a PMIx
// launch that does not say how many) are an error (each would run the whole job). Throws CommError
// (kind invalid_argument or transport).
std::unique_ptr<World> make_world(int ranks, const CommOptions& options);

}  // namespace tandem::comm
