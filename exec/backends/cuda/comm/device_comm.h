// DeviceCommunicator: comm::Communicator's operations (exec/comm/communicator.h) on DEVICE buffers,
// ordered on a CUDA stream the caller passes (the rank's comm stream).
//
// The executor holds one per rank it runs on a GPU: pp_send / pp_recv are send / recv, dispatch /
// combine are all_to_all_v over the EP group (sizes exchanged first with all_to_all_counts, on the
// host), ZeRO-1's dp_reduce_scatter / dp_all_gather are reduce_scatter_sum / all_gather_v over the
// DP group. Two implementations:
//   virtual_ranks.h  VirtualRankWorld: R ranks in one process on one GPU, on top of the host
//                    in-process world (bit-identical to it, including reduce_scatter_sum)
//   nccl_comm.h      NcclCommunicator: one rank per GPU through NCCL (built with TANDEM_HAVE_NCCL)
//
// Contract: that of comm::Communicator (groups, matching, determinism, timeouts, world failure),
// read with "device pointer" for every buffer, plus:
//
// - Stream semantics. A call enqueues its device work on `stream` and returns; it may return
//   before any byte moved. Precisely:
//   * Input buffers (send's data, all_to_all_v's send[i], reduce_scatter_sum's in, all_gather_v's
//     in) must hold their data for work enqueued on `stream` at the time of the call (write them on
//     `stream` before the call, or make `stream` wait for an event recorded after the writer).
//     They are read by work the call enqueues on `stream`: the caller may overwrite them only with
//     work ordered after the call on `stream` (later on `stream`, or on another stream after
//     cudaStreamWaitEvent on an event recorded on `stream` after the call).
//   * Output buffers (recv's data, recv[i], out) hold the received data for exactly the same
//     work: later on `stream`, after such an event, or on the host after cudaStreamSynchronize /
//     cudaEventSynchronize of it. Nobody may touch them from elsewhere until then.
//   * Blocking of the host thread: a recv may block until the sender has ISSUED the matching send,
//     a collective until every member has issued it (with CommOptions::timeout), never until device
//     work finishes. Whether the stream itself may stall on a peer is the implementation's
//     property: VirtualRankWorld's sends are eager on the host and on the stream (the payload is
//     copied to a staging buffer); NCCL's p2p is a rendezvous on the GPU (nccl_comm.h).
//   * Calls make device() current on the calling thread (cudaSetDevice).
// - Buffers of one call must not overlap each other, except the in-place forms the host contract
//   names (reduce_scatter_sum's out = its own block of in; all_gather_v's in = its own slot of out).
// - Errors are comm::CommError as on the host (a timeout names this rank, the operation, the label
//   and the peers not heard from), and fail the world as there. A CUDA or NCCL failure inside a
//   call is a CommError of kind transport carrying the runtime's message; it fails the world too.
// - Numerics: bytes arrive as sent. reduce_scatter_sum: see the implementation (virtual ranks add
//   in group order, bit-identical to comm::Communicator; NCCL reduces in its own order).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/comm/communicator.h"

namespace tandem::cuda {

class DeviceCommunicator {
 public:
  virtual ~DeviceCommunicator() = default;

  virtual int rank() const = 0;    // this rank, in [0, size())
  virtual int size() const = 0;    // ranks in the world
  virtual int device() const = 0;  // this rank's CUDA device
  virtual std::string describe() const = 0;  // e.g. "virtual rank 2 of 4 on device 0"

  // This rank's host Communicator in the same world (same ranks, same numbering): for host data
  // such as counts. Collectives on one group, host ones through host() and device ones through
  // this object, must be issued in the same order by every member.
  virtual comm::Communicator& host() = 0;

  // Point to point (pp). tag >= 0. send to self is allowed (recv it later from the same rank).
  virtual void send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label,
                    cudaStream_t stream) = 0;
  // `bytes` must equal the matching send's size (else CommErrorKind::mismatch).
  virtual void recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label,
                    cudaStream_t stream) = 0;

  // Dispatch / combine into the caller's buffers: send[i] goes to member i, recv[i] receives what
  // member i sends to this rank (recv[i].size must equal it; learn sizes with all_to_all_counts).
  // Zero sizes are fine (data may then be null). group.size() entries each.
  virtual void all_to_all_v(std::span<const int> group, std::span<const comm::ConstBytes> send,
                            std::span<const comm::MutableBytes> recv, std::string_view label,
                            cudaStream_t stream) = 0;

  // Host counts for all_to_all_v, through host(): recv_counts[i] = send_counts[self] of member i.
  // Blocks until every member called it (a host collective on `group`).
  void all_to_all_counts(std::span<const int> group, std::span<const std::size_t> send_counts,
                         std::span<std::size_t> recv_counts, std::string_view label);

  // ZeRO-1 gradient reduce-scatter, FP32: `in` holds sum(counts) floats, block i belonging to
  // member i; `out` (counts[self] floats) receives the sum over members. counts: the same on every
  // member; a count may be 0.
  virtual void reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                                  std::span<const std::size_t> counts, std::string_view label,
                                  cudaStream_t stream) = 0;

  // ZeRO-1 parameter all-gather: member i contributes bytes_per_member[i] bytes; `out` receives the
  // contributions in group order. bytes_per_member: the same on every member.
  virtual void all_gather_v(std::span<const int> group, const void* in, void* out,
                            std::span<const std::size_t> bytes_per_member, std::string_view label,
                            cudaStream_t stream) = 0;
  // Equal contributions: `out` holds group.size() * bytes bytes.
  void all_gather(std::span<const int> group, const void* in, std::size_t bytes, void* out,
                  std::string_view label, cudaStream_t stream);

  // Stream-ordered barrier: work enqueued on any member's `stream` after the call runs after all
  // work enqueued on every member's `stream` before its call. Blocks the host until every member
  // has issued it.
  virtual void barrier(std::span<const int> group, std::string_view label, cudaStream_t stream) = 0;

  // Fails the world on this rank's behalf (as comm::Communicator::abort). Does not throw.
  virtual void abort(std::string_view reason) = 0;
};

// The contract's argument checks, shared by the implementations. Every problem goes through
// fail(), which each implementation defines: it fails the world on this rank's behalf and throws
// CommError(kind, rank(), op, label, peers, rank(), detail), as the host world does for its own.
class CheckedDeviceCommunicator : public DeviceCommunicator {
 protected:
  [[noreturn]] virtual void fail(comm::CommErrorKind kind, const char* op, std::string_view label,
                                 std::vector<int> peers, const std::string& detail) = 0;

  // p2p: peer a rank of the world, tag >= 0, the buffer (what: "the send buffer") as check_buffer.
  void check_p2p(const char* op, std::string_view label, int peer, int tag, const void* data, std::size_t bytes,
                 const char* what);
  // A buffer of `bytes` bytes: null only when empty. what: "the send buffer".
  void check_buffer(const char* op, std::string_view label, const void* data, std::size_t bytes, const char* what);
  // A valid group containing this rank; returns this rank's index in it.
  std::size_t check_group(const char* op, std::string_view label, std::span<const int> group);
  // all_to_all_v: the group, one send and one receive buffer per member (each checked), and the
  // self send as large as the self receive. Returns this rank's index.
  std::size_t check_all_to_all(const char* op, std::string_view label, std::span<const int> group,
                               std::span<const comm::ConstBytes> send, std::span<const comm::MutableBytes> recv);
  // reduce_scatter_sum / all_gather_v: the group and one size per member (sizes_name: "counts").
  // The caller checks its buffers against the result.
  struct Blocks {
    std::size_t self = 0;             // this rank's index in the group
    std::vector<std::size_t> offset;  // prefix_offsets(sizes): offset.back() is the total
    std::size_t mine = 0;             // sizes[self]
  };
  Blocks check_blocks(const char* op, std::string_view label, std::span<const int> group,
                      std::span<const std::size_t> sizes, const char* sizes_name);
};

// Helpers shared by the implementations (device_comm.cpp).

// Device memory from the stream-ordered allocator, freed with cudaFreeAsync on `stream` when this
// goes: after all work enqueued there before, so error paths may leave with work still pending.
class StreamScratch {
 public:
  explicit StreamScratch(cudaStream_t stream) : stream_(stream) {}
  StreamScratch(const StreamScratch&) = delete;
  StreamScratch& operator=(const StreamScratch&) = delete;
  ~StreamScratch();
  // cudaMallocFromPoolAsync from `pool`, or cudaMallocAsync (the device's pool) when null; once.
  // Returns the runtime's result (get() stays null on failure).
  cudaError_t allocate(std::size_t bytes, cudaMemPool_t pool = nullptr);
  void* get() const { return p_; }

 private:
  cudaStream_t stream_;
  void* p_ = nullptr;
};

// A group as the host contract wants it for rank `rank` of a world of `size`: members in range,
// distinct, the caller among them. self: the caller's index; problem: empty when valid, else the
// reason ("group {1,1} names rank 1 twice").
struct GroupCheck {
  std::size_t self = 0;
  std::string problem;
};
GroupCheck check_group(std::span<const int> group, int rank, int size);
std::string group_text(std::span<const int> group);  // "{1,3}"

// Prefix sums: offsets[i] = sum of sizes[0..i), offsets[n] = the total.
std::vector<std::size_t> prefix_offsets(std::span<const std::size_t> sizes);

// A fingerprint of a size list (comm::group_id's FNV-1a over the sizes as 32-bit halves): members
// compare theirs to detect calls that disagree on sizes every member must share.
std::uint64_t sizes_fingerprint(std::span<const std::size_t> sizes);

// The detail of a recv whose size differs from the matching send's.
std::string recv_size_problem(std::size_t expected, int tag, int peer, std::size_t sent);

// Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) share a byte (empty ranges don't).
bool ranges_overlap(const void* a, std::size_t a_bytes, const void* b, std::size_t b_bytes);

// The same error under another operation name, e.g. a device collective that failed in the host
// exchange underneath it ("all_to_all_v") reported as "reduce_scatter_sum".
comm::CommError with_operation(const comm::CommError& e, const std::string& op);

}  // namespace tandem::cuda
