// ZeRO-1's shard layout, shared by the CPU rank runner and the CUDA backend's DeviceZero1: the
// flattened parameters (and gradients) of a stage are cut into near-equal contiguous shards, one
// per member of the DP (or expert-DP) group, in group order.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <vector>

namespace tandem::runtime {

// counts[i] = n / members, plus one for i < n % members. members >= 1.
inline std::vector<std::size_t> zero1_shard_counts(std::size_t n, std::size_t members) {
  if (members == 0) throw std::invalid_argument("zero1_shard_counts: members must be >= 1");
  std::vector<std::size_t> c(members, n / members);
  for (std::size_t i = 0; i < n % members; ++i) ++c[i];
  return c;
}

// Where member `member`'s shard starts: the sum of counts[0, member).
inline std::size_t zero1_shard_offset(const std::vector<std::size_t>& counts, std::size_t member) {
  std::size_t o = 0;
  for (std::size_t i = 0; i < member && i < counts.size(); ++i) o += counts[i];
  return o;
}

}  // namespace tandem::runtime
