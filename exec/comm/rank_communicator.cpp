#include "exec/comm/rank_communicator.h"

#include <algorithm>
#include <cstring>
#include <utility>

namespace tandem::comm {

namespace {

std::string group_text(std::span<const int> group) {
  std::string s = "{";
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (i) s += ",";
    if (i == 16 && group.size() > 20) {
      s += "... (" + std::to_string(group.size()) + " ranks)";
      break;
    }
    s += std::to_string(group[i]);
  }
  return s + "}";
}

std::vector<std::byte> copy_bytes(ConstBytes b) {
  std::vector<std::byte> v(b.size);
  if (b.size) std::memcpy(v.data(), b.data, b.size);
  return v;
}

// out[k] += src[k] for k < n, in FP32, element by element. `src` is read through memcpy because a
// received payload is bytes, not float objects.
void add_into(float* out, const std::byte* src, std::size_t n) {
  constexpr std::size_t chunk = 1024;
  float tmp[chunk];
  for (std::size_t i = 0; i < n; i += chunk) {
    const std::size_t m = std::min(chunk, n - i);
    std::memcpy(tmp, src + i * sizeof(float), m * sizeof(float));
    for (std::size_t k = 0; k < m; ++k) out[i + k] += tmp[k];
  }
}

}  // namespace

RankCommunicator::RankCommunicator(Transport& transport, int rank, const CommOptions& options)
    : transport_(transport), rank_(rank), options_(options) {}

RankCommunicator::Call RankCommunicator::begin(const char* op, std::string_view label) {
  Call c{op, std::string(label), {}};
  const std::int64_t n = ops_.fetch_add(1) + 1;
  if (options_.fault && options_.fault->rank == rank_ && n >= options_.fault->at_operation) {
    std::string detail = "died: injected fault at operation " + std::to_string(options_.fault->at_operation);
    if (n > options_.fault->at_operation) detail += " (this is operation " + std::to_string(n) + ")";
    const CommError e(CommErrorKind::injected_fault, rank_, op, c.label, {}, rank_, detail);
    if (options_.fault->mode == FaultInjection::Mode::announced && n == options_.fault->at_operation) {
      transport_.fail(rank_, e.what());
    }
    throw e;
  }
  if (transport_.failure().failed()) raise(c, CommErrorKind::peer_failed, {}, "");
  c.deadline = Clock::now() + options_.timeout;
  return c;
}

void RankCommunicator::raise(const Call& c, CommErrorKind kind, std::vector<int> peers, const std::string& detail) {
  if (kind == CommErrorKind::peer_failed) {
    const WorldFailure& f = transport_.failure();
    std::string d = "aborted";
    if (!peers.empty()) d += " while waiting for " + rank_list(peers);
    d += f.first_rank() >= 0 ? ": rank " + std::to_string(f.first_rank()) + " failed first (" + f.reason() + ")"
                              : ": the world failed (" + f.reason() + ")";
    throw CommError(kind, rank_, c.op, c.label, std::move(peers), f.first_rank(), d);
  }
  CommError e(kind, rank_, c.op, c.label, std::move(peers), rank_, detail);
  if (kind != CommErrorKind::injected_fault) transport_.fail(rank_, e.what());
  throw e;
}

void RankCommunicator::check_peer(const Call& c, int peer) {
  if (peer < 0 || peer >= size()) {
    raise(c, CommErrorKind::invalid_argument, {},
          "peer " + std::to_string(peer) + " is not a rank of this world of " + std::to_string(size()));
  }
}

void RankCommunicator::check_buffer(const Call& c, const void* data, std::size_t bytes, const char* what) {
  if (!data && bytes) {
    raise(c, CommErrorKind::invalid_argument, {},
          std::string(what) + " is null but has " + std::to_string(bytes) + " bytes");
  }
}

RankCommunicator::GroupCall RankCommunicator::enter_group(const Call& c, std::span<const int> group) {
  if (group.empty()) raise(c, CommErrorKind::invalid_argument, {}, "the group is empty");
  GroupCall g;
  bool found = false;
  std::vector<int> sorted(group.begin(), group.end());
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (group[i] < 0 || group[i] >= size()) {
      raise(c, CommErrorKind::invalid_argument, {},
            "group " + group_text(group) + " names rank " + std::to_string(group[i]) +
                ", not a rank of this world of " + std::to_string(size()));
    }
    if (i && sorted[i] == sorted[i - 1]) {
      raise(c, CommErrorKind::invalid_argument, {},
            "group " + group_text(group) + " names rank " + std::to_string(sorted[i]) + " twice");
    }
    if (group[i] == rank_) {
      g.self = i;
      found = true;
    }
  }
  if (!found) {
    raise(c, CommErrorKind::invalid_argument, {},
          "group " + group_text(group) + " does not contain the caller");
  }
  g.id = group_id(group);
  std::lock_guard lock(seq_m_);
  g.seq = seq_[g.id]++;
  return g;
}

void RankCommunicator::wait(const Call& c, std::span<const MessageKey> keys,
                            std::span<std::optional<Message>> slots, std::span<const int> peers) {
  const Mailbox::Status s = transport_.mailbox(rank_).take_all(keys, slots, c.deadline, transport_.failure());
  if (s == Mailbox::Status::complete) return;
  std::vector<int> missing;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (!slots[i]) missing.push_back(peers[i]);
  }
  if (s == Mailbox::Status::failed) raise(c, CommErrorKind::peer_failed, std::move(missing), "");
  const std::string detail =
      "timed out after " + std::to_string(options_.timeout.count()) + " ms waiting for " + rank_list(missing);
  raise(c, CommErrorKind::timeout, std::move(missing), detail);
}

std::vector<std::optional<Message>> RankCommunicator::exchange(const Call& c, OpCode op, std::span<const int> group,
                                                               const GroupCall& g,
                                                               std::span<const ConstBytes> parts) {
  const std::size_t n = group.size();
  for (std::size_t i = 0; i < n; ++i) {
    if (i == g.self) continue;
    Message m;
    m.key = {MessageKey::Space::collective, rank_, g.id, g.seq};
    m.dst = group[i];
    m.op = op;
    m.label = c.label;
    m.payload = copy_bytes(parts[i]);
    transport_.post(std::move(m));
  }
  std::vector<MessageKey> keys(n);
  std::vector<std::optional<Message>> slots(n);
  for (std::size_t i = 0; i < n; ++i) keys[i] = {MessageKey::Space::collective, group[i], g.id, g.seq};
  slots[g.self].emplace();  // nothing to take from itself
  wait(c, keys, slots, group);
  for (std::size_t i = 0; i < n; ++i) {
    if (i == g.self || slots[i]->op == op) continue;
    raise(c, CommErrorKind::mismatch, {group[i]},
          "met rank " + std::to_string(group[i]) + "'s " + to_string(slots[i]->op) + " \"" + slots[i]->label +
              "\" (call " + std::to_string(g.seq) + " on group " + group_text(group) + ")");
  }
  return slots;
}

void RankCommunicator::send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label) {
  const Call c = begin("send", label);
  check_peer(c, peer);
  if (tag < 0) raise(c, CommErrorKind::invalid_argument, {peer}, "tag " + std::to_string(tag) + " is negative");
  check_buffer(c, data, bytes, "the send buffer");
  Message m;
  m.key = {MessageKey::Space::p2p, rank_, static_cast<std::uint64_t>(tag), 0};
  m.dst = peer;
  m.op = OpCode::send;
  m.label = c.label;
  m.payload = copy_bytes({data, bytes});
  transport_.post(std::move(m));
}

void RankCommunicator::recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label) {
  const Call c = begin("recv", label);
  check_peer(c, peer);
  if (tag < 0) raise(c, CommErrorKind::invalid_argument, {peer}, "tag " + std::to_string(tag) + " is negative");
  check_buffer(c, data, bytes, "the receive buffer");
  const MessageKey key{MessageKey::Space::p2p, peer, static_cast<std::uint64_t>(tag), 0};
  std::optional<Message> slot;
  wait(c, std::span(&key, 1), std::span(&slot, 1), std::span(&peer, 1));
  if (slot->payload.size() != bytes) {
    raise(c, CommErrorKind::mismatch, {peer},
          "expected " + std::to_string(bytes) + " bytes with tag " + std::to_string(tag) + " but rank " +
              std::to_string(peer) + " sent " + std::to_string(slot->payload.size()) + " (\"" + slot->label + "\")");
  }
  if (bytes) std::memcpy(data, slot->payload.data(), bytes);
}

void RankCommunicator::all_to_all_v(std::span<const int> group, std::span<const ConstBytes> send,
                                    std::vector<std::vector<std::byte>>& recv, std::string_view label) {
  const Call c = begin("all_to_all_v", label);
  const GroupCall g = enter_group(c, group);
  if (send.size() != group.size()) {
    raise(c, CommErrorKind::invalid_argument, {},
          std::to_string(send.size()) + " send buffers for a group of " + std::to_string(group.size()));
  }
  for (const ConstBytes& b : send) check_buffer(c, b.data, b.size, "a send buffer");
  std::vector<std::optional<Message>> slots = exchange(c, OpCode::all_to_all_v, group, g, send);
  std::vector<std::vector<std::byte>> out(group.size());
  for (std::size_t i = 0; i < group.size(); ++i) {
    out[i] = i == g.self ? copy_bytes(send[i]) : std::move(slots[i]->payload);
  }
  recv = std::move(out);
}

void RankCommunicator::all_to_all_v(std::span<const int> group, std::span<const ConstBytes> send,
                                    std::span<const MutableBytes> recv, std::string_view label) {
  const Call c = begin("all_to_all_v", label);
  const GroupCall g = enter_group(c, group);
  if (send.size() != group.size() || recv.size() != group.size()) {
    raise(c, CommErrorKind::invalid_argument, {},
          std::to_string(send.size()) + " send and " + std::to_string(recv.size()) +
              " receive buffers for a group of " + std::to_string(group.size()));
  }
  for (const ConstBytes& b : send) check_buffer(c, b.data, b.size, "a send buffer");
  for (const MutableBytes& b : recv) check_buffer(c, b.data, b.size, "a receive buffer");
  if (recv[g.self].size != send[g.self].size) {
    raise(c, CommErrorKind::invalid_argument, {},
          "sends " + std::to_string(send[g.self].size) + " bytes to itself into a receive buffer of " +
              std::to_string(recv[g.self].size));
  }
  std::vector<std::optional<Message>> slots = exchange(c, OpCode::all_to_all_v, group, g, send);
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (i == g.self || slots[i]->payload.size() == recv[i].size) continue;
    raise(c, CommErrorKind::mismatch, {group[i]},
          "expected " + std::to_string(recv[i].size) + " bytes from rank " + std::to_string(group[i]) + ", it sent " +
              std::to_string(slots[i]->payload.size()));
  }
  if (send[g.self].size) std::memmove(recv[g.self].data, send[g.self].data, send[g.self].size);
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (i != g.self && recv[i].size) std::memcpy(recv[i].data, slots[i]->payload.data(), recv[i].size);
  }
}

void RankCommunicator::reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                                          std::span<const std::size_t> counts, std::string_view label) {
  const Call c = begin("reduce_scatter_sum", label);
  const GroupCall g = enter_group(c, group);
  const std::size_t n = group.size();
  if (counts.size() != n) {
    raise(c, CommErrorKind::invalid_argument, {},
          std::to_string(counts.size()) + " counts for a group of " + std::to_string(n));
  }
  std::size_t total = 0;
  for (std::size_t k : counts) total += k;
  check_buffer(c, in, total * sizeof(float), "the input");
  std::vector<ConstBytes> parts(n);
  for (std::size_t i = 0, at = 0; i < n; at += counts[i], ++i) parts[i] = {in + at, counts[i] * sizeof(float)};
  const std::size_t mine = counts[g.self];
  check_buffer(c, out, mine * sizeof(float), "the output");
  // Own block copied first: `out` may overlap `in`.
  const std::vector<std::byte> own = copy_bytes(parts[g.self]);
  std::vector<std::optional<Message>> slots = exchange(c, OpCode::reduce_scatter_sum, group, g, parts);
  for (std::size_t i = 0; i < n; ++i) {
    if (i == g.self || slots[i]->payload.size() == mine * sizeof(float)) continue;
    raise(c, CommErrorKind::mismatch, {group[i]},
          "expected " + std::to_string(mine) + " floats from rank " + std::to_string(group[i]) + ", it sent " +
              std::to_string(slots[i]->payload.size() / sizeof(float)) + " (do the members' counts agree?)");
  }
  if (mine == 0) return;
  // Group order: out = in_0, then out += in_1, out += in_2, ...
  for (std::size_t i = 0; i < n; ++i) {
    const std::byte* src = i == g.self ? own.data() : slots[i]->payload.data();
    if (i == 0) {
      std::memcpy(out, src, mine * sizeof(float));
    } else {
      add_into(out, src, mine);
    }
  }
}

void RankCommunicator::all_gather_v(std::span<const int> group, const void* in, void* out,
                                    std::span<const std::size_t> bytes_per_member, std::string_view label) {
  const Call c = begin("all_gather_v", label);
  const GroupCall g = enter_group(c, group);
  const std::size_t n = group.size();
  if (bytes_per_member.size() != n) {
    raise(c, CommErrorKind::invalid_argument, {},
          std::to_string(bytes_per_member.size()) + " sizes for a group of " + std::to_string(n));
  }
  const std::size_t mine = bytes_per_member[g.self];
  check_buffer(c, in, mine, "the input");
  std::vector<std::size_t> offset(n);
  std::size_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    offset[i] = total;
    total += bytes_per_member[i];
  }
  check_buffer(c, out, total, "the output");
  const std::vector<ConstBytes> parts(n, ConstBytes{in, mine});
  std::vector<std::optional<Message>> slots = exchange(c, OpCode::all_gather_v, group, g, parts);
  for (std::size_t i = 0; i < n; ++i) {
    if (i == g.self || slots[i]->payload.size() == bytes_per_member[i]) continue;
    raise(c, CommErrorKind::mismatch, {group[i]},
          "expected " + std::to_string(bytes_per_member[i]) + " bytes from rank " + std::to_string(group[i]) +
              ", it sent " + std::to_string(slots[i]->payload.size()));
  }
  auto* o = static_cast<std::byte*>(out);
  if (mine) std::memmove(o + offset[g.self], in, mine);  // `out` may overlap `in` (in place)
  for (std::size_t i = 0; i < n; ++i) {
    if (i != g.self && bytes_per_member[i]) std::memcpy(o + offset[i], slots[i]->payload.data(), bytes_per_member[i]);
  }
}

void RankCommunicator::barrier(std::span<const int> group, std::string_view label) {
  const Call c = begin("barrier", label);
  const GroupCall g = enter_group(c, group);
  const std::vector<ConstBytes> parts(group.size());
  exchange(c, OpCode::barrier, group, g, parts);
}

void RankCommunicator::abort(std::string_view reason) {
  transport_.fail(rank_, "rank " + std::to_string(rank_) + " called abort: " + std::string(reason));
}

}  // namespace tandem::comm
