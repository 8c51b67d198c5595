// Message: what one rank hands another, and the key a receiver matches it by (internal to comm/).
//
// A point-to-point message is keyed by (source, tag). A collective's message is keyed by (source,
// group id, the group's call number), so the k-th collective on a group only ever meets the k-th
// collective of the other members. The operation and the sender's label travel along so a
// receiver can report a mismatch ("rank 2 called barrier ...") and undelivered messages.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tandem::comm {

enum class OpCode : std::uint8_t { send, all_to_all_v, reduce_scatter_sum, all_gather_v, barrier };
const char* to_string(OpCode op);

struct MessageKey {
  enum class Space : std::uint8_t { p2p, collective };
  Space space = Space::p2p;
  int src = -1;            // sending world rank
  std::uint64_t id = 0;    // p2p: the tag; collective: the group id
  std::uint64_t seq = 0;   // collective: the sender's call number on the group; p2p: 0

  auto operator<=>(const MessageKey&) const = default;
};

struct Message {
  MessageKey key;
  int dst = -1;
  OpCode op = OpCode::send;
  std::string label;                // the sender's label
  std::vector<std::byte> payload;
};

// The id of an ordered group: FNV-1a over its size and members (group order matters).
std::uint64_t group_id(std::span<const int> group);

// One line for World::undelivered(): "rank 0 -> rank 1: send "label" tag 7, 64 bytes, never received".
std::string describe_undelivered(const Message& m);

}  // namespace tandem::comm
