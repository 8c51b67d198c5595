// VirtualRankWorld: R ranks of a job in ONE process on ONE GPU, each a DeviceCommunicator
// (device_comm.h). The way to run a multi-rank schedule on a single-GPU machine (NCCL refuses two
// ranks on one device): each rank is driven by its own host thread with its own comm stream and
// its own device buffers.
//
// Built on the host in-process world (exec/comm/in_process.h): matching by (source, tag) and by
// call order, deadlines, world failure, fault injection and World::undelivered are the host
// world's, not rewritten. Every device operation is ONE host operation of the same kind (send,
// recv, or one host all_to_all_v for each collective), so CommOptions::fault's at_operation counts
// device operations. How data moves ("parcels"):
//   sender, on its stream:  staging = cudaMallocFromPoolAsync (the world's pool); D2D copy of the
//                           payload into it; cudaEventRecord(e) (cudaEventDisableTiming)
//   sender, on the host:    a 32-byte host message {operation, sizes fingerprint, bytes, parcel id}
//                           through the host Communicator (send, or inside the collective's
//                           all_to_all_v of such messages)
//   receiver, on its stream: cudaStreamWaitEvent(e); D2D copy (or the reduction) out of staging;
//                           cudaFreeAsync(staging) — stream-ordered after its last read
// So sends are eager on the host AND on the stream: a send never waits for its receiver, as
// Program::check_program assumes. The id refers to a world-wide registry (mutex) holding the
// staging pointer and event, so a parcel is consumed at most once; events are pooled and reused
// once the receiver's cudaStreamWaitEvent has captured them (CUDA: later records of an event do not
// affect an earlier wait). Parcels never received are released by undelivered() or the destructor.
//
// Numerics: copies are exact. reduce_scatter_sum adds in GROUP ORDER in FP32: out = in_0's block
// (a D2D copy); then add_inplace(out, in_m's block) for m = 1..n-1 (infra/elementwise.h, one launch
// each: one IEEE round-to-nearest-even __fadd_rn per element, no FMA contraction, no
// flush-to-zero). That is exactly the host contract's loop
// `acc = in_0[k]; for (m = 1; m < n; ++m) acc += in_m[k];`, so results are bit-identical to
// comm::Communicator::reduce_scatter_sum (in-process or MPI) on the same data, NaN payloads aside.
//
// Errors: host-side failures are the host world's CommErrors, reported under the device operation's
// name (a device reduce_scatter_sum that times out says "reduce_scatter_sum", not the all_to_all_v
// underneath). A parcel whose operation or size disagrees with the receiver's call is a
// CommErrorKind::mismatch that fails the world. A CUDA failure inside a call is a CommError of kind
// transport (the world fails). The world's ranks all live on `device`.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "exec/comm/communicator.h"
#include "exec/comm/world.h"
#include "exec/backends/cuda/comm/device_comm.h"

namespace tandem::cuda {

class VirtualRankWorld {
 public:
  // ranks >= 1; options as for comm::InProcessWorld (timeout > 0, optional fault). Creates the
  // staging memory pool on `device` (throws CudaError if the device is unavailable).
  explicit VirtualRankWorld(int ranks, int device = 0, const comm::CommOptions& options = {});
  // Waits for the device, releases parcels never received, destroys events and the pool. Streams the ranks used must still exist or be destroyed after their work ended.
  ~VirtualRankWorld();
  VirtualRankWorld(const VirtualRankWorld&) = delete;
  VirtualRankWorld& operator=(const VirtualRankWorld&) = delete;

  int size() const;
  int device() const;
  DeviceCommunicator& comm(int rank);  // rank in [0, size())
  comm::World& host_world();           // the in-process world underneath (host data, failure)
  std::string describe() const;        // "virtual ranks: 4 on device 0"

  // The world's first failure, if any (the host world's).
  std::optional<comm::Failure> failure() const;
  // The host world's undelivered messages (one line each; the byte count is the 32-byte host
  // message, not the payload) and releases their parcels' staging buffers (stream-ordered after
  // the sender's copy, on an internal stream). Call once the ranks are done, as World::undelivered.
  std::vector<std::string> undelivered();

  // Staging bytes allocated and not yet freed (cudaMemPoolAttrUsedMemCurrent of the world's pool).
  // After every message was received and the ranks' streams are synchronised: 0.
  std::size_t staging_bytes_in_use() const;
  // Bytes the pool holds from the driver (cudaMemPoolAttrReservedMemCurrent). The pool keeps freed
  // memory for reuse (release threshold: unlimited) until trim().
  std::size_t staging_bytes_reserved() const;
  // Synchronises the device and returns the pool's unused memory to the driver.
  void trim();

  // Parcels posted and not yet consumed (messages in flight or never received).
  std::size_t parcels_in_flight() const;

  class Shared;  // state shared by the ranks (virtual_ranks.cpp)

 private:
  std::unique_ptr<Shared> shared_;
  std::vector<std::unique_ptr<DeviceCommunicator>> comms_;
};

}  // namespace tandem::cuda
