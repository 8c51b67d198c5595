// MpiWorld: a job's R ranks spread over the P processes of an MPI launch (built with TANDEM_HAVE_MPI).
//
// `mpirun -np P tandem execute ...` runs the same job as the in-process world, R % P == 0: process
// p hosts the contiguous ranks [p*R/P, (p+1)*R/P), one thread each. Ranks of one process exchange
// messages through their mailboxes, exactly as in the in-process world; a message for a rank of
// another process is one MPI_Isend (header + label + payload, MPI_BYTE) on a private duplicate of
// MPI_COMM_WORLD, and one progress thread per process receives everything (MPI_Improbe +
// MPI_Mrecv, polled with a short back-off sleep) and delivers it to the destination rank's mailbox.
// Matching, deadlines and reductions therefore live in one place (RankCommunicator) for both
// worlds, and results are bit-identical to the in-process world. The MPI tag only says "data" or
// "abort": keys travel in the header, so MPI_TAG_UB (only guaranteed >= 32767) limits nothing.
//
// Failures: a rank's failure is sent to every other process ("abort" message), whose progress
// thread fails the world there too, so blocked ranks everywhere fail at once naming the first
// failed rank (first as seen by each process: two processes failing at the same moment may each
// name their own).
//
// MPI is initialised on first use with MPI_THREAD_MULTIPLE (rank threads call MPI_Isend while the
// progress thread receives); a lower provided level is an error. It is finalised at exit if this
// library initialised it. Creating and destroying an MpiWorld are collective: every process does
// it with the same arguments in the same order; both are bounded by CommOptions::world_timeout
// (construction throws; destruction, which waits until this process's sends are delivered and all
// processes arrived, calls MPI_Abort rather than hang).
#pragma once

#include <memory>
#include <vector>

#include "exec/comm/world.h"

namespace tandem::comm {

// MPI_Init_thread at `thread_level` (MPI_THREAD_*) unless MPI is initialised already; MPI_Finalize
// at exit if this call initialised it. For every user of MPI in the process (MpiWorld, the
// plan and sweep process groups). Throws CommError (transport) if MPI fails to start.
void ensure_mpi_initialised(int thread_level);

class MpiWorld final : public World {
 public:
  // Throws CommError: invalid_argument when ranks % processes != 0, transport when MPI lacks
  // MPI_THREAD_MULTIPLE or the other processes do not arrive within world_timeout.
  MpiWorld(int ranks, const CommOptions& options = {});
  ~MpiWorld() override;

  int processes() const;  // P
  int process() const;    // this process's index in MPI_COMM_WORLD

  int size() const override;
  const std::vector<int>& local_ranks() const override;
  Communicator& comm(int rank) override;
  std::string describe() const override;
  std::optional<Failure> failure() const override;
  std::vector<std::string> undelivered() override;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::comm
