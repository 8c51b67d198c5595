// NcclCommunicator: the DeviceCommunicator (device_comm.h) of one rank on its own GPU, through
// NCCL. Declared only when the build has NCCL (TANDEM_HAVE_NCCL, set by the tandem_nccl target);
// nccl_built() says which at run time. NCCL refuses two ranks on one GPU: use VirtualRankWorld
// (virtual_ranks.h) for that.
//
// Bootstrap:
//   (a) NcclLocalWorld: one process drives all (or the given) local GPUs, one rank each, made with
//       ncclCommInitAll; it also owns an in-process host world of the same ranks (host()). Drive
//       each rank from its own thread (NCCL calls of different ranks must not run one after the
//       other on one thread: they synchronise with each other).
//   (b) NcclCommunicator::init_rank: one rank per host rank, e.g. under mpirun with the MPI world
//       (exec/comm/mpi.h). Collective over the host world: host rank 0 calls ncclGetUniqueId, a
//       host all_gather spreads the id, every rank calls cudaSetDevice(device) (typically its
//       node-local index, OMPI_COMM_WORLD_LOCAL_RANK) and ncclCommInitRank.
//
// Operations (each on the rank's `stream`, as device_comm.h states):
//   send / recv          ncclSend / ncclRecv (bytes as ncclInt8) on the world communicator. NCCL
//                        has no tags: messages between two ranks match in ISSUE ORDER, which the
//                        Program guarantees per peer. Checked cheaply on the host: every send also
//                        posts a 40-byte host ticket {sequence number per (sender, receiver),
//                        bytes} with its tag through host(); the recv takes the ticket for
//                        (peer, tag) and fails with CommErrorKind::mismatch when NCCL would hand it
//                        another message (recvs from one peer issued in another order than the
//                        sends) or another size. So a recv blocks the host until the sender issued
//                        its send (with CommOptions::timeout), as on the host world.
//                        NOT eager on the GPU: an ncclSend completes when the receiver's stream runs
//                        the ncclRecv (rendezvous; "blocking for the GPU", nccl.h). The host call
//                        returns at once, but work behind a send on its stream waits for the peer.
//                        Send to self: NCCL could only pair it with a recv in the same group, so it
//                        is a staged copy (cudaMallocAsync + D2D + event, handed over in the ticket).
//   all_to_all_v         ncclGroupStart; ncclSend/ncclRecv per member with a non-zero size (self
//                        included); ncclGroupEnd — on the group's communicator. Sizes are not
//                        checked (exchange them first with all_to_all_counts): a disagreement is an
//                        NCCL error or a stall that the watchdog turns into a timeout.
//   reduce_scatter_sum   equal counts: ncclReduceScatter (FP32, ncclSum; in place when out is the
//                        own block of in). Unequal counts: blocks padded with zeros to the largest
//                        count in a cudaMallocAsync buffer, one in-place ncclReduceScatter, own
//                        block copied out (padding only ever adds 0 to padding).
//   all_gather_v         equal sizes: ncclAllGather (bytes); unequal: grouped ncclSend/ncclRecv
//                        (exact sizes, no padding) plus a local copy of the own slot.
//   barrier              ncclAllReduce of one float on the group's communicator: stream-ordered.
// Groups: every group (the full world too) gets its own NCCL communicator, created at this rank's
// first collective on it and cached: member 0 calls ncclGetUniqueId, a host all_gather over the
// group spreads it (a host collective on the group, at the same point on every member), then
// ncclCommInitRank(group.size(), id, index). Only members take part (ncclCommSplit would need every
// rank of the parent). p2p keeps the world communicator to itself, so pipeline messages and
// collectives never share NCCL's issue-order matching. Each NCCL communicator is used by one
// thread at a time (a mutex per communicator: NCCL communicators are not thread-safe).
//
// Numerics: bytes arrive as sent. ncclReduceScatter adds in NCCL's own order (ring, PAT or NVLS:
// its choice, per chunk), NOT in the group order of comm::Communicator, so results are not
// bit-identical to the host / virtual-rank worlds and may change with the algorithm, the message
// size and the topology. Both are FP32 sums of the same n values in some order: each is within
// (n-1)·2^-24·Σ|x_m| of the exact sum (first order), so they differ by at most twice that per
// element. With n <= 2 they should be identical (one FP32 rounding of a commutative sum).
//
// Errors, asynchronous errors and timeouts: every NCCL call's result is checked; a failure throws
// CommError kind transport: `rank 3: reduce_scatter_sum "dp_rs 7" ncclReduceScatter failed:
// <ncclGetErrorString> (<ncclGetLastError>)` and fails the host world (host().abort), so the other
// ranks' host calls fail at once. Each communicator runs a watchdog thread that, every 2 ms,
// (1) polls ncclCommGetAsyncError on each of its NCCL communicators (an error fails the rank, kind
// transport), and (2) queries a cudaEvent (cudaEventDisableTiming) recorded on `stream` after each
// call's NCCL work: still pending CommOptions::timeout after the call started means a peer never
// joined — the rank fails with kind timeout, naming the operation and label. On a failure the
// watchdog calls ncclCommAbort on each of the rank's NCCL communicators (which unblocks its
// stalled kernels) once no thread of this rank is inside an NCCL call on it; every later call of
// the rank throws peer_failed naming the first failure. Not bounded by the timeout: a call that
// blocks the HOST inside NCCL (initialisation; first-use connection setup in ncclGroupEnd, when a
// peer never arrives — set NCCL_RUNTIME_CONNECT=0 to connect at initialisation instead); the p2p
// host tickets make that rare for send/recv. Other ranks learn of a failure through the host world
// (their next host call) or their own watchdog (their NCCL work never completes).
//
// Destruction waits (up to CommOptions::timeout) for the rank's NCCL work, then ncclCommDestroy (or
// ncclCommAbort after a failure). ncclCommDestroy is an intra-node collective: destroy the
// communicators of one node concurrently (NcclLocalWorld does, one thread per rank).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/comm/communicator.h"
#include "exec/comm/world.h"
#include "exec/backends/cuda/comm/device_comm.h"

namespace tandem::cuda {

// True when this build has NCCL (the classes below exist).
bool nccl_built();

#if TANDEM_HAVE_NCCL

// ncclGetVersion (e.g. 22809 for 2.28.9); works without a GPU.
int nccl_version();

class NcclCommunicator final : public CheckedDeviceCommunicator {
 public:
  // Bootstrap (b): every rank of host's world calls this, each from its own thread, with the
  // device it drives. `host` must outlive the result. Throws CommError (transport: NCCL failed).
  static std::unique_ptr<NcclCommunicator> init_rank(comm::Communicator& host, int device,
                                                     const comm::CommOptions& options = {});
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  int device() const override;
  std::string describe() const override;
  comm::Communicator& host() override;

  void send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label,
            cudaStream_t stream) override;
  void recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label, cudaStream_t stream) override;
  void all_to_all_v(std::span<const int> group, std::span<const comm::ConstBytes> send,
                    std::span<const comm::MutableBytes> recv, std::string_view label, cudaStream_t stream) override;
  void reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                          std::span<const std::size_t> counts, std::string_view label, cudaStream_t stream) override;
  void all_gather_v(std::span<const int> group, const void* in, void* out,
                    std::span<const std::size_t> bytes_per_member, std::string_view label,
                    cudaStream_t stream) override;
  void barrier(std::span<const int> group, std::string_view label, cudaStream_t stream) override;
  void abort(std::string_view reason) override;

  class Impl;

 private:
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  [[noreturn]] void fail(comm::CommErrorKind kind, const char* op, std::string_view label, std::vector<int> peers,
                         const std::string& detail) override;
  std::unique_ptr<Impl> impl_;
  friend class NcclLocalWorld;
};

// Bootstrap (a): one rank per device of this process, ncclCommInitAll.
class NcclLocalWorld {
 public:
  // devices: the GPUs, rank r on devices[r]; empty = every visible device. Throws CommError
  // (invalid_argument: no device; transport: NCCL failed).
  explicit NcclLocalWorld(std::vector<int> devices = {}, const comm::CommOptions& options = {});
  // Destroys the ranks' communicators concurrently (ncclCommDestroy is an intra-node collective).
  ~NcclLocalWorld();
  NcclLocalWorld(const NcclLocalWorld&) = delete;
  NcclLocalWorld& operator=(const NcclLocalWorld&) = delete;

  int size() const;
  NcclCommunicator& comm(int rank);
  comm::World& host_world();
  std::string describe() const;  // "NCCL 2.28.9, 2 ranks on devices 0,1"

 private:
  std::unique_ptr<comm::World> host_;
  std::vector<int> devices_;
  std::vector<std::unique_ptr<NcclCommunicator>> comms_;
};

#endif  // TANDEM_HAVE_NCCL

}  // namespace tandem::cuda
