// RankCommunicator: the Communicator of one rank, on top of a Transport (internal to comm/).
//
// Both worlds (in_process.h, mpi.h) hand out this class; it holds every algorithm: argument checks,
// deadlines, fault injection, collective call numbering, and the collectives themselves. Each
// collective is one direct exchange: every member posts its part to every other member, then
// takes one message from each (n - 1 messages each way per member; enough for CPU-scale runs).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "exec/comm/communicator.h"
#include "exec/comm/transport.h"

namespace tandem::comm {

class RankCommunicator final : public Communicator {
 public:
  RankCommunicator(Transport& transport, int rank, const CommOptions& options);

  int rank() const override { return rank_; }
  int size() const override { return transport_.size(); }

  void send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label) override;
  void recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label) override;
  void all_to_all_v(std::span<const int> group, std::span<const ConstBytes> send,
                    std::vector<std::vector<std::byte>>& recv, std::string_view label) override;
  void all_to_all_v(std::span<const int> group, std::span<const ConstBytes> send,
                    std::span<const MutableBytes> recv, std::string_view label) override;
  void reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                          std::span<const std::size_t> counts, std::string_view label) override;
  void all_gather_v(std::span<const int> group, const void* in, void* out,
                    std::span<const std::size_t> bytes_per_member, std::string_view label) override;
  void barrier(std::span<const int> group, std::string_view label) override;
  void abort(std::string_view reason) override;

 private:
  struct Call {
    const char* op;
    std::string label;
    Clock::time_point deadline;
  };
  struct GroupCall {
    std::size_t self = 0;  // this rank's index in the group
    std::uint64_t id = 0;
    std::uint64_t seq = 0;
  };

  Call begin(const char* op, std::string_view label);
  // Throws; every kind but peer_failed and injected_fault fails the world first.
  [[noreturn]] void raise(const Call& c, CommErrorKind kind, std::vector<int> peers, const std::string& detail);
  void check_peer(const Call& c, int peer);
  void check_buffer(const Call& c, const void* data, std::size_t bytes, const char* what);
  GroupCall enter_group(const Call& c, std::span<const int> group);
  // Waits for slots (keys[i] from peers[i]); turns a timeout or a world failure into a CommError.
  void wait(const Call& c, std::span<const MessageKey> keys, std::span<std::optional<Message>> slots,
            std::span<const int> peers);
  // Posts parts[i] to member i (i != self) and takes one message from every other member; returns
  // them in member order (the self slot holds an empty message). Checks that every member made
  // the same operation.
  std::vector<std::optional<Message>> exchange(const Call& c, OpCode op, std::span<const int> group,
                                               const GroupCall& g, std::span<const ConstBytes> parts);

  Transport& transport_;
  const int rank_;
  const CommOptions options_;
  std::atomic<std::int64_t> ops_{0};
  std::mutex seq_m_;
  std::unordered_map<std::uint64_t, std::uint64_t> seq_;  // group id -> next call number
};

}  // namespace tandem::comm
