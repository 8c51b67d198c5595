// ProcessGroup: the processes one `tandem plan` or `tandem sweep` runs on.
//
// Under an MPI launcher (`mpirun -n K tandem plan ...`, detected as exec/comm/world.h's
// launched_under_mpi) the K processes each run a share of the simulations and exchange the
// results, so every process holds every result and takes the same decisions; process 0 prints
// and writes the files. Without a launcher, or in a build without MPI (where several launched
// processes are refused rather than each running the whole search), it is this one process.
//
// MPI is initialised on first use (MPI_THREAD_FUNNELED: only the main thread calls MPI) and
// finalised at exit. Every call is collective: each process makes it in the same order.
#pragma once

#include <string>
#include <vector>

namespace tandem {

class ProcessGroup {
 public:
  static ProcessGroup& get();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool leader() const { return rank_ == 0; }

  // The indices of `count` items this process takes (i % size == rank): how work is split.
  std::vector<size_t> share(size_t count) const;

  // Every process's `mine`, in process order.
  std::vector<std::string> all_gather(const std::string& mine) const;

 private:
  ProcessGroup();
  int rank_ = 0, size_ = 1;
};

}  // namespace tandem
