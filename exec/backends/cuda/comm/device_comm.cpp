#include "exec/backends/cuda/comm/device_comm.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "common/signed_index.h"
#include "exec/comm/message.h"

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

void CheckedDeviceCommunicator::check_p2p(const char* op, std::string_view label, int peer, int tag, const void* data,
                                          std::size_t bytes, const char* what) {
  if (peer < 0 || peer >= size()) {
    fail(comm::CommErrorKind::invalid_argument, op, label, {},
         "peer " + std::to_string(peer) + " is not a rank of this world of " + std::to_string(size()));
  }
  if (tag < 0) fail(comm::CommErrorKind::invalid_argument, op, label, {peer}, "tag " + std::to_string(tag) + " is negative");
  check_buffer(op, label, data, bytes, what);
}

void CheckedDeviceCommunicator::check_buffer(const char* op, std::string_view label, const void* data,
                                             std::size_t bytes, const char* what) {
  if (!data && bytes) {
    fail(comm::CommErrorKind::invalid_argument, op, label, {},
         std::string(what) + " is null but has " + std::to_string(bytes) + " bytes");
  }
}

std::size_t CheckedDeviceCommunicator::check_group(const char* op, std::string_view label, std::span<const int> group) {
  // Checked before any device work or host message (the host checks again in its exchange).
  const GroupCheck g = tandem::cuda::check_group(group, rank(), size());
  if (!g.problem.empty()) fail(comm::CommErrorKind::invalid_argument, op, label, {}, g.problem);
  return g.self;
}

std::size_t CheckedDeviceCommunicator::check_all_to_all(const char* op, std::string_view label,
                                                        std::span<const int> group,
                                                        std::span<const comm::ConstBytes> send,
                                                        std::span<const comm::MutableBytes> recv) {
  const std::size_t self = check_group(op, label, group);
  const std::size_t n = group.size();
  if (send.size() != n || recv.size() != n) {
    fail(comm::CommErrorKind::invalid_argument, op, label, {},
         std::to_string(send.size()) + " send and " + std::to_string(recv.size()) + " receive buffers for a group of " +
             std::to_string(n));
  }
  for (const comm::ConstBytes& b : send) check_buffer(op, label, b.data, b.size, "a send buffer");
  for (const comm::MutableBytes& b : recv) check_buffer(op, label, b.data, b.size, "a receive buffer");
  if (recv[self].size != send[self].size) {
    fail(comm::CommErrorKind::invalid_argument, op, label, {},
         "sends " + std::to_string(send[self].size) + " bytes to itself into a receive buffer of " +
             std::to_string(recv[self].size));
  }
  return self;
}

CheckedDeviceCommunicator::Blocks CheckedDeviceCommunicator::check_blocks(const char* op, std::string_view label,
                                                                          std::span<const int> group,
                                                                          std::span<const std::size_t> sizes,
                                                                          const char* sizes_name) {
  Blocks b;
  b.self = check_group(op, label, group);
  if (sizes.size() != group.size()) {
    fail(comm::CommErrorKind::invalid_argument, op, label, {},
         std::to_string(sizes.size()) + " " + sizes_name + " for a group of " + std::to_string(group.size()));
  }
  b.offset = prefix_offsets(sizes);
  b.mine = sizes[b.self];
  return b;
}

StreamScratch::~StreamScratch() {
  if (p_) cudaFreeAsync(p_, stream_);
}

cudaError_t StreamScratch::allocate(std::size_t bytes, cudaMemPool_t pool) {
  void* p = nullptr;
  const cudaError_t err = pool ? cudaMallocFromPoolAsync(&p, bytes, pool, stream_) : cudaMallocAsync(&p, bytes, stream_);
  if (err == cudaSuccess) p_ = p;
  return err;
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
  g.self = idx(it - group.begin());
  return g;
}

std::vector<std::size_t> prefix_offsets(std::span<const std::size_t> sizes) {
  std::vector<std::size_t> off(sizes.size() + 1, 0);
  for (std::size_t i = 0; i < sizes.size(); ++i) off[i + 1] = off[i] + sizes[i];
  return off;
}

std::uint64_t sizes_fingerprint(std::span<const std::size_t> sizes) {
  std::vector<int> words;
  words.reserve(2 * sizes.size());
  for (const std::uint64_t s : sizes) {
    words.push_back(static_cast<int>(static_cast<std::uint32_t>(s)));
    words.push_back(static_cast<int>(static_cast<std::uint32_t>(s >> 32)));
  }
  return comm::group_id(words);
}

std::string recv_size_problem(std::size_t expected, int tag, int peer, std::size_t sent) {
  return "expected " + std::to_string(expected) + " bytes with tag " + std::to_string(tag) + " but rank " +
         std::to_string(peer) + " sent " + std::to_string(sent);
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
