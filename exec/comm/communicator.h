// Communicator: what ONE rank of a world of size() ranks can do with the others.
//
// The executor holds one Communicator per rank it runs and calls it from that rank's comm stream.
// Operations are byte-level (the caller knows the types): the Program's pp_send / pp_recv are
// send / recv; dispatch / combine are all_to_all_v over the EP group (FP8 bytes and FP32 scales,
// BF16 or FP32 activations: one call per payload, or packed by the caller); ZeRO-1's
// dp_reduce_scatter / dp_all_gather are reduce_scatter_sum / all_gather_v over the DP group.
//
// Contract, for every implementation:
// - Groups are ordered lists of world ranks that contain the caller exactly once. Every member
//   passes the same list in the same order; "member i" is group[i], and results are laid out in
//   group order. A group need not be sorted or contiguous (ranks {1,3,5,7} of 8 are a group).
// - Matching. send/recv match by (source, tag), first sent first received (non-overtaking, as in
//   MPI). Collectives on one group match by call order: the k-th collective a rank makes on a group
//   meets the k-th collective of every other member on the same group; if their operations or
//   sizes disagree, the call fails with CommErrorKind::mismatch instead of mixing data.
// - Threads. Different ranks run concurrently. One rank's Communicator may also be called from
//   several threads at once, provided each group's collectives, and each (peer, tag) stream of
//   sends, are issued in one order (as in MPI).
// - Sends are eager: send (and the sending half of every collective) copies the payload and
//   returns without waiting for the receiver. Program::check_program's deadlock check assumes
//   exactly this (a pp_send finishes on its own). Messages that were sent and never received are
//   listed by World::undelivered().
// - Determinism. Every received byte is the sender's byte. reduce_scatter_sum adds in group order:
//   out = ((in_0 + in_1) + in_2) + ... in FP32, exactly the sequential loop
//   `acc = in_0[k]; for (m = 1; m < n; ++m) acc += in_m[k];` so results are bit-identical run to
//   run and across worlds (in-process or MPI), whatever order the messages arrive in.
// - Timeouts and failures. Every call has one deadline, CommOptions::timeout after it starts. A call
//   that cannot finish throws CommError (comm_error.h) naming this rank, the operation, the label
//   and the peers it waited for; it never hangs. Any CommError (other than peer_failed) fails the
//   whole world: every other rank's pending or later call throws CommErrorKind::peer_failed at
//   once, naming the rank that failed first and why. A failed world stays failed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "exec/comm/comm_error.h"

namespace tandem::comm {

// Tests: make one rank "die" at its N-th Communicator call (calls counted from 1 on that rank, all
// operations alike). That call and every later one throw CommErrorKind::injected_fault.
struct FaultInjection {
  enum class Mode {
    silent,     // the rank just stops: nobody is told, so the others' timeouts fire and name it
    announced,  // the rank also fails the world: the others fail at once, naming it
  };
  int rank = -1;
  std::int64_t at_operation = 1;
  Mode mode = Mode::announced;
};

struct CommOptions {
  std::chrono::milliseconds timeout{60'000};  // per call; > 0
  // MPI world only: how long creating and destroying the world (both collective over the
  // processes) wait for the other processes before failing (construction) or MPI_Abort
  // (destruction). Kept apart from `timeout` because processes may reach the end of a job far
  // apart (one waits out a timeout, another has finished).
  std::chrono::milliseconds world_timeout{60'000};
  std::optional<FaultInjection> fault;
};

// A caller's buffer, as bytes.
struct ConstBytes {
  const void* data = nullptr;
  std::size_t size = 0;
};
struct MutableBytes {
  void* data = nullptr;
  std::size_t size = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;  // this rank, in [0, size())
  virtual int size() const = 0;  // ranks in the world

  // Point to point (pipeline parallelism). `label` names the task for error messages, e.g.
  // "pp_send F mb 4 stage 2". tag >= 0 (the executor uses the Program's message id).
  // send: eager, returns once `bytes` bytes at `data` are copied; may send to itself.
  // recv: blocks until the oldest message from `peer` with `tag` arrives and copies it to `data`;
  // its size must be exactly `bytes` (else CommErrorKind::mismatch).
  virtual void send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label) = 0;
  virtual void recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label) = 0;

  // All-to-all with a size per pair (dispatch / combine). send[i] goes to member i (send[self] is
  // copied locally); zero-length pairs are fine. Both forms take group.size() entries.
  // This form learns incoming sizes inside the call: recv is resized to group.size() and recv[i]
  // becomes what member i sent to this rank.
  virtual void all_to_all_v(std::span<const int> group, std::span<const ConstBytes> send,
                            std::vector<std::vector<std::byte>>& recv, std::string_view label) = 0;
  // This form receives into the caller's buffers: recv[i].size must equal what member i sends
  // (else CommErrorKind::mismatch). Learn the sizes first with all_to_all_counts.
  virtual void all_to_all_v(std::span<const int> group, std::span<const ConstBytes> send,
                            std::span<const MutableBytes> recv, std::string_view label) = 0;
  // Exchanges one count per pair: recv_counts[i] = the send_counts[self] of member i. A collective
  // call of its own (an all_to_all_v of 8-byte values).
  void all_to_all_counts(std::span<const int> group, std::span<const std::size_t> send_counts,
                         std::span<std::size_t> recv_counts, std::string_view label);

  // ZeRO-1 gradient reduce-scatter: `in` holds sum(counts) floats, block i (counts[i] floats, in
  // order) belonging to member i; `out` (counts[self] floats; may overlap `in`, e.g. in place on
  // the own block) receives the sum over members, added in group order (see "Determinism"
  // above). counts: group.size() entries, the same on every member; a count may be 0.
  virtual void reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                                  std::span<const std::size_t> counts, std::string_view label) = 0;

  // ZeRO-1 parameter all-gather: member i contributes bytes_per_member[i] bytes (`in`); `out`
  // (sum of bytes_per_member bytes; may overlap `in`, e.g. in place where `in` is the own slot)
  // receives the contributions in group order. bytes_per_member: the same on every member.
  virtual void all_gather_v(std::span<const int> group, const void* in, void* out,
                            std::span<const std::size_t> bytes_per_member, std::string_view label) = 0;
  // Equal contributions: `out` holds group.size() * bytes bytes.
  void all_gather(std::span<const int> group, const void* in, std::size_t bytes, void* out,
                  std::string_view label);

  // Returns once every member has entered the barrier.
  virtual void barrier(std::span<const int> group, std::string_view label) = 0;

  // Fails the world on this rank's behalf (e.g. the executor's compute failed): every rank's
  // pending and later calls throw peer_failed naming this rank and `reason`. Does not throw.
  virtual void abort(std::string_view reason) = 0;
};

}  // namespace tandem::comm
