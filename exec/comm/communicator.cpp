#include "exec/comm/communicator.h"

#include <string>

namespace tandem::comm {

void Communicator::all_to_all_counts(std::span<const int> group, std::span<const std::size_t> send_counts,
                                     std::span<std::size_t> recv_counts, std::string_view label) {
  if (send_counts.size() != group.size() || recv_counts.size() != group.size()) {
    const CommError e(CommErrorKind::invalid_argument, rank(), "all_to_all_counts", std::string(label), {},
                      rank(),
                      "needs one count per member (group of " + std::to_string(group.size()) + ", " +
                          std::to_string(send_counts.size()) + " send and " +
                          std::to_string(recv_counts.size()) + " receive counts)");
    abort(e.what());  // as every other failed call: the world fails with it
    throw e;
  }
  std::vector<ConstBytes> send(group.size());
  std::vector<MutableBytes> recv(group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    send[i] = {&send_counts[i], sizeof(std::size_t)};
    recv[i] = {&recv_counts[i], sizeof(std::size_t)};
  }
  all_to_all_v(group, send, std::span<const MutableBytes>(recv), label);
}

void Communicator::all_gather(std::span<const int> group, const void* in, std::size_t bytes, void* out,
                              std::string_view label) {
  const std::vector<std::size_t> sizes(group.size(), bytes);
  all_gather_v(group, in, out, sizes, label);
}

}  // namespace tandem::comm
