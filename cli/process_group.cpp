#include "cli/process_group.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>

#include "common/input_error.h"
#include "common/signed_index.h"
#include "exec/comm/world.h"

#ifdef TANDEM_HAVE_MPI
#include <mpi.h>

#include "exec/comm/mpi.h"
#endif

namespace tandem {

ProcessGroup::ProcessGroup() {
  if (!comm::launched_under_mpi()) return;
#ifdef TANDEM_HAVE_MPI
  comm::ensure_mpi_initialised(MPI_THREAD_FUNNELED);  // only the main thread calls MPI
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
#else
  // Several processes would each run (and print) the whole search.
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* v = std::getenv(var); v && std::atoi(v) > 1)
      throw_input_error("<command line>", "mpirun",
                        "this tandem was built without MPI: run the search as one process (-j N for local workers)");
#endif
}

ProcessGroup& ProcessGroup::get() {
  static ProcessGroup group;
  return group;
}

std::vector<size_t> ProcessGroup::share(size_t count) const {
  std::vector<size_t> mine;
  for (size_t i = idx(rank_); i < count; i += idx(size_)) mine.push_back(i);
  return mine;
}

std::vector<std::string> ProcessGroup::all_gather(const std::string& mine) const {
  if (size_ == 1) return {mine};
#ifdef TANDEM_HAVE_MPI
  const long long n = static_cast<long long>(mine.size());
  std::vector<long long> sizes(idx(size_));
  MPI_Allgather(&n, 1, MPI_LONG_LONG, sizes.data(), 1, MPI_LONG_LONG, MPI_COMM_WORLD);
  // MPI counts are ints: large exchanges go in pieces of at most 1 GiB per process.
  constexpr long long kPiece = 1LL << 30;
  std::vector<std::string> all(idx(size_));
  for (int p = 0; p < size_; ++p) all[idx(p)].resize(idx(sizes[idx(p)]));
  long long longest = 0;
  for (long long s : sizes) longest = std::max(longest, s);
  for (long long offset = 0; offset < longest; offset += kPiece) {
    std::vector<int> counts(idx(size_)), displs(idx(size_));
    std::string recv;
    long long total = 0;
    for (int p = 0; p < size_; ++p) {
      const long long left = std::max(0LL, sizes[idx(p)] - offset);
      counts[idx(p)] = static_cast<int>(std::min(left, kPiece));
      displs[idx(p)] = static_cast<int>(total);
      total += counts[idx(p)];
    }
    if (total > INT32_MAX) throw std::runtime_error("ProcessGroup::all_gather: a piece exceeds 2 GiB");
    recv.resize(idx(total));
    const int mine_count = counts[idx(rank_)];
    MPI_Allgatherv(mine.data() + std::min<long long>(offset, n), mine_count, MPI_CHAR, recv.data(), counts.data(),
                   displs.data(), MPI_CHAR, MPI_COMM_WORLD);
    for (int p = 0; p < size_; ++p)
      std::copy_n(recv.data() + displs[idx(p)], counts[idx(p)],
                  all[idx(p)].data() + offset);
  }
  return all;
#else
  return {mine};
#endif
}

}  // namespace tandem
