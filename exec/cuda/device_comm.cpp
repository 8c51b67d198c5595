#include "exec/cuda/device_comm.h"

#include <algorithm>
#include <cstdint>
#include <string>

namespace tandem::cuda {

void DeviceCommunicator::all_to_all_counts(std::span<const int> group, std::span<const std::size_t> send_counts,
                                           std::span<std::size_t> recv_counts, std::string_view label) {
  host().all_to_all_counts(group, send_counts, recv_counts, label);
}

void DeviceCommunicator::all_gather(std::span<const int> group, const void* in, std::size_t bytes, void* out,
                                    std::string_view label, cudaStream_t stream) {
  const std::vector<std::size_t> sizes(group.size(), bytes);
  all_gather_v(group, in, out, sizes, label, stream);
}

std::string group_text(std::span<const int> group) {
  std::string s = "{";
  for (std::size_t i = 0; i < group.size(); ++i) s += (i ? "," : "") + std::to_string(group[i]);
  return s + "}";
}

GroupCheck check_group(std::span<const int> group, int rank, int size) {
  GroupCheck g;
  if (group.empty()) {
    g.problem = "the group is empty";
    return g;
  }
  std::vector<int> sorted(group.begin(), group.end());
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] < 0 || sorted[i] >= size) {
      g.problem = "group " + group_text(group) + " names rank " + std::to_string(sorted[i]) +
                  ", not a rank of this world of " + std::to_string(size);
      return g;
    }
    if (i && sorted[i] == sorted[i - 1]) {
      g.problem = "group " + group_text(group) + " names rank " + std::to_string(sorted[i]) + " twice";
      return g;
    }
  }
  const auto it = std::find(group.begin(), group.end(), rank);
  if (it == group.end()) {
    g.problem = "group " + group_text(group) + " does not contain the caller";
    return g;
  }
  g.self = static_cast<std::size_t>(it - group.begin());
  return g;
}

std::vector<std::size_t> prefix_offsets(std::span<const std::size_t> sizes) {
  std::vector<std::size_t> off(sizes.size() + 1, 0);
  for (std::size_t i = 0; i < sizes.size(); ++i) off[i + 1] = off[i] + sizes[i];
  return off;
}

std::uint64_t sizes_fingerprint(std::span<const std::size_t> sizes) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](std::uint64_t v) {
    for (int b = 0; b < 8; ++b) {
      h ^= (v >> (8 * b)) & 0xffu;
      h *= 0x100000001b3ull;
    }
  };
  mix(sizes.size());
  for (std::size_t s : sizes) mix(s);
  return h;
}

bool ranges_overlap(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes) {
  if (a_bytes == 0 || b_bytes == 0) return false;
  const auto pa = reinterpret_cast<std::uintptr_t>(a);
  const auto pb = reinterpret_cast<std::uintptr_t>(b);
  return pa < pb + b_bytes && pb < pa + a_bytes;
}

comm::CommError with_operation(const comm::CommError& e, const std::string& op) {
  // what() is `rank R: <op> "<label>" <detail>` (comm_error.h); keep the detail, swap the op.
  const std::string what = e.what();
  const std::string prefix = "rank " + std::to_string(e.rank()) + ": " + e.op() + " \"" + e.label() + "\" ";
  if (e.rank() < 0 || what.rfind(prefix, 0) != 0) return e;
  return comm::CommError(e.kind(), e.rank(), op, e.label(), e.peers(), e.first_failed_rank(),
                         what.substr(prefix.size()));
}

}  // namespace tandem::cuda
