#include "exec/comm/message.h"

namespace tandem::comm {

const char* to_string(OpCode op) {
  switch (op) {
    case OpCode::send: return "send";
    case OpCode::all_to_all_v: return "all_to_all_v";
    case OpCode::reduce_scatter_sum: return "reduce_scatter_sum";
    case OpCode::all_gather_v: return "all_gather_v";
    case OpCode::barrier: return "barrier";
  }
  return "?";
}

std::uint64_t group_id(std::span<const int> group) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  auto mix = [&h](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) {
      h ^= (v >> (8 * i)) & 0xffU;
      h *= 0x100000001b3ULL;
    }
  };
  mix(group.size());
  for (int r : group) mix(static_cast<std::uint32_t>(r));
  return h;
}

std::string describe_undelivered(const Message& m) {
  std::string s = "rank " + std::to_string(m.key.src) + " -> rank " + std::to_string(m.dst) + ": " +
                  to_string(m.op) + " \"" + m.label + "\"";
  if (m.key.space == MessageKey::Space::p2p) {
    s += " tag " + std::to_string(m.key.id);
  } else {
    s += " (call " + std::to_string(m.key.seq) + " on its group)";
  }
  return s + ", " + std::to_string(m.payload.size()) + " bytes, never received";
}

}  // namespace tandem::comm
