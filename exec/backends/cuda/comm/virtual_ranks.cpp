#include "exec/backends/cuda/comm/virtual_ranks.h"

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "common/signed_index.h"
#include "exec/comm/comm_error.h"
#include "exec/comm/in_process.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/elementwise.h"

namespace tandem::cuda {

namespace {

enum class Op : std::uint32_t { send = 1, all_to_all_v, reduce_scatter_sum, all_gather_v, barrier };

const char* op_name(std::uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::send: return "send";
    case Op::all_to_all_v: return "all_to_all_v";
    case Op::reduce_scatter_sum: return "reduce_scatter_sum";
    case Op::all_gather_v: return "all_gather_v";
    case Op::barrier: return "barrier";
  }
  return "a host operation";
}

constexpr std::uint32_t kMagic = 0x54445643;  // marks a device parcel's host message

// The host message standing for one parcel (or for "nothing for you" inside a collective).
struct Handoff {
  std::uint32_t magic = kMagic;
  std::uint32_t op = 0;
  std::uint64_t fingerprint = 0;  // sizes_fingerprint of the sizes every member shares; 0 for send
  std::uint64_t bytes = 0;        // payload bytes
  std::uint64_t parcel = 0;       // registry id; 0 = no parcel (no payload, no event)
};
static_assert(sizeof(Handoff) == 32, "the host message is 32 bytes");

Handoff handoff(Op op, std::uint64_t fingerprint = 0) {
  Handoff h;
  h.op = static_cast<std::uint32_t>(op);
  h.fingerprint = fingerprint;
  return h;
}

void copy_d2d(void* dst, const void* src, std::size_t bytes, cudaStream_t stream) {
  if (bytes == 0 || dst == src) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream), "cudaMemcpyAsync D2D");
}

}  // namespace

// ------------------------------------------------------------------------------------ Shared

class VirtualRankWorld::Shared {
 public:
  struct Parcel {
    void* staging = nullptr;  // pool memory; null when bytes == 0
    std::size_t bytes = 0;
    cudaEvent_t ready = nullptr;  // recorded on the sender's stream after the copy into staging
  };

  Shared(int ranks, int device, const comm::CommOptions& options);
  ~Shared();
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;

  const int device;
  comm::InProcessWorld host;

  // Copies `bytes` at `src` into fresh staging on `stream` and records its event there. Returns the
  // parcel's id, or 0 when there is nothing to post (no bytes and !with_event; barriers post
  // event-only parcels).
  std::uint64_t post(const void* src, std::size_t bytes, bool with_event, cudaStream_t stream);
  // Removes a parcel from the registry (throws std::logic_error for an unknown id).
  Parcel take(std::uint64_t id);
  // `stream` waits for the parcel's copy; the event returns to the pool (the wait captured it).
  void wait_for(Parcel& p, cudaStream_t stream);
  // Frees the staging on `stream` (stream-ordered: after everything enqueued there before).
  void free_staging(Parcel& p, cudaStream_t stream) noexcept;

  void* alloc(std::size_t bytes, cudaStream_t stream);
  cudaMemPool_t pool() const { return pool_; }

  // Frees every parcel still registered (never received), each after its sender's copy.
  void release_all_parcels();
  std::size_t in_flight() const;
  std::size_t pool_attribute(cudaMemPoolAttr attr) const;
  void trim();

 private:
  cudaEvent_t acquire_event();
  void release_event(cudaEvent_t e);
  void destroy_resources() noexcept;

  cudaMemPool_t pool_ = nullptr;
  cudaStream_t cleanup_ = nullptr;  // releases parcels nobody received

  mutable std::mutex m_;
  std::unordered_map<std::uint64_t, Parcel> parcels_;
  std::uint64_t next_id_ = 1;
  std::vector<cudaEvent_t> free_events_;
  std::vector<cudaEvent_t> all_events_;
};

VirtualRankWorld::Shared::Shared(int ranks, int dev, const comm::CommOptions& options)
    : device(dev), host(ranks, options) {
  try {
    check(cudaSetDevice(device), "cudaSetDevice (VirtualRankWorld)");
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    check(cudaMemPoolCreate(&pool_, &props), "cudaMemPoolCreate (staging pool)");
    // Keep freed staging for reuse across synchronisations; trim() gives it back.
    std::uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool_, cudaMemPoolAttrReleaseThreshold, &keep),
          "cudaMemPoolSetAttribute (release threshold)");
    check(cudaStreamCreateWithFlags(&cleanup_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  } catch (...) {
    destroy_resources();
    throw;
  }
}

VirtualRankWorld::Shared::~Shared() {
  cudaSetDevice(device);
  cudaDeviceSynchronize();  // the ranks' streams may still copy into or out of staging
  try {
    release_all_parcels();
  } catch (...) {
    // A broken context: nothing more to free safely.
  }
  destroy_resources();
}

void VirtualRankWorld::Shared::destroy_resources() noexcept {
  if (cleanup_) cudaStreamDestroy(cleanup_);
  for (cudaEvent_t e : all_events_) cudaEventDestroy(e);
  all_events_.clear();
  free_events_.clear();
  if (pool_) cudaMemPoolDestroy(pool_);
  cleanup_ = nullptr;
  pool_ = nullptr;
}

cudaEvent_t VirtualRankWorld::Shared::acquire_event() {
  std::lock_guard lock(m_);
  if (!free_events_.empty()) {
    cudaEvent_t e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  all_events_.push_back(e);
  return e;
}

void VirtualRankWorld::Shared::release_event(cudaEvent_t e) {
  std::lock_guard lock(m_);
  free_events_.push_back(e);
}

void* VirtualRankWorld::Shared::alloc(std::size_t bytes, cudaStream_t stream) {
  void* p = nullptr;
  check(cudaMallocFromPoolAsync(&p, bytes, pool_, stream), "cudaMallocFromPoolAsync (staging)");
  return p;
}

std::uint64_t VirtualRankWorld::Shared::post(const void* src, std::size_t bytes, bool with_event,
                                             cudaStream_t stream) {
  if (bytes == 0 && !with_event) return 0;
  Parcel p;
  p.bytes = bytes;
  if (bytes > 0) {
    p.staging = alloc(bytes, stream);
    const cudaError_t err = cudaMemcpyAsync(p.staging, src, bytes, cudaMemcpyDeviceToDevice, stream);
    if (err != cudaSuccess) {
      cudaFreeAsync(p.staging, stream);
      check(err, "cudaMemcpyAsync D2D (into staging)");
    }
  }
  try {
    p.ready = acquire_event();
    check(cudaEventRecord(p.ready, stream), "cudaEventRecord (parcel ready)");
  } catch (...) {
    if (p.staging) cudaFreeAsync(p.staging, stream);
    if (p.ready) release_event(p.ready);
    throw;
  }
  std::lock_guard lock(m_);
  const std::uint64_t id = next_id_++;
  parcels_.emplace(id, p);
  return id;
}

VirtualRankWorld::Shared::Parcel VirtualRankWorld::Shared::take(std::uint64_t id) {
  std::lock_guard lock(m_);
  const auto it = parcels_.find(id);
  if (it == parcels_.end()) {
    throw std::logic_error("device parcel " + std::to_string(id) + " is unknown (consumed twice or released)");
  }
  const Parcel p = it->second;
  parcels_.erase(it);
  return p;
}

void VirtualRankWorld::Shared::wait_for(Parcel& p, cudaStream_t stream) {
  if (!p.ready) return;
  check(cudaStreamWaitEvent(stream, p.ready, 0), "cudaStreamWaitEvent (parcel ready)");
  release_event(p.ready);
  p.ready = nullptr;
}

void VirtualRankWorld::Shared::free_staging(Parcel& p, cudaStream_t stream) noexcept {
  // Only after wait_for: freeing before the stream waited could hand the memory to another
  // allocation while the sender's copy still writes it.
  if (!p.staging || p.ready) return;
  cudaFreeAsync(p.staging, stream);
  p.staging = nullptr;
}

void VirtualRankWorld::Shared::release_all_parcels() {
  std::unordered_map<std::uint64_t, Parcel> left;
  {
    std::lock_guard lock(m_);
    left.swap(parcels_);
  }
  if (left.empty()) return;
  check(cudaSetDevice(device), "cudaSetDevice");
  for (auto& [id, p] : left) {
    wait_for(p, cleanup_);
    free_staging(p, cleanup_);
  }
  check(cudaStreamSynchronize(cleanup_), "cudaStreamSynchronize (releasing undelivered parcels)");
}

std::size_t VirtualRankWorld::Shared::in_flight() const {
  std::lock_guard lock(m_);
  return parcels_.size();
}

std::size_t VirtualRankWorld::Shared::pool_attribute(cudaMemPoolAttr attr) const {
  std::uint64_t v = 0;
  check(cudaMemPoolGetAttribute(pool_, attr, &v), "cudaMemPoolGetAttribute");
  return idx(v);
}

void VirtualRankWorld::Shared::trim() {
  check(cudaSetDevice(device), "cudaSetDevice");
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize (trim)");
  check(cudaMemPoolTrimTo(pool_, 0), "cudaMemPoolTrimTo");
}

// ------------------------------------------------------------------------------- one rank

namespace {

using Shared = VirtualRankWorld::Shared;
using Parcel = Shared::Parcel;

// A parcel this rank took from the registry: `stream` waits for it on construction; its staging is
// freed on `stream` when the holder goes (stream-ordered after every read enqueued before), on
// error paths too.
class Received {
 public:
  Received() = default;
  Received(Shared& w, std::uint64_t id, cudaStream_t stream) : w_(&w), stream_(stream) {
    if (id == 0) return;
    p_ = w.take(id);
    w.wait_for(p_, stream);
  }
  Received(Received&& o) noexcept : w_(o.w_), stream_(o.stream_), p_(o.p_) { o.p_ = Parcel{}; }
  Received& operator=(Received&& o) noexcept {
    if (this != &o) {
      release();
      w_ = o.w_;
      stream_ = o.stream_;
      p_ = o.p_;
      o.p_ = Parcel{};
    }
    return *this;
  }
  Received(const Received&) = delete;
  Received& operator=(const Received&) = delete;
  ~Received() { release(); }

  const void* data() const { return p_.staging; }
  std::size_t bytes() const { return p_.bytes; }

 private:
  void release() noexcept {
    if (w_) w_->free_staging(p_, stream_);
    p_ = Parcel{};
  }
  Shared* w_ = nullptr;
  cudaStream_t stream_ = nullptr;
  Parcel p_;
};

// `bytes` (> 0) at `src` as they are at this point of `stream`, copied into `scratch` from the
// staging pool: for an input the call overwrites before its last read.
const void* snapshot(Shared& w, StreamScratch& scratch, const void* src, std::size_t bytes, cudaStream_t stream) {
  check(scratch.allocate(bytes, w.pool()), "cudaMallocFromPoolAsync (own block)");
  copy_d2d(scratch.get(), src, bytes, stream);
  return scratch.get();
}

class VirtualRankComm final : public CheckedDeviceCommunicator {
 public:
  VirtualRankComm(Shared& w, int rank) : w_(w), host_(w.host.comm(rank)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return w_.host.size(); }
  int device() const override { return w_.device; }
  std::string describe() const override {
    return "virtual rank " + std::to_string(rank_) + " of " + std::to_string(size()) + " on device " +
           std::to_string(w_.device);
  }
  comm::Communicator& host() override { return host_; }

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
  void abort(std::string_view reason) override { host_.abort(reason); }

 private:
  // Runs one operation: host CommErrors come out under `op`'s name, CUDA failures as kind transport
  // after failing the world.
  template <class Body>
  void guarded(const char* op, std::string_view label, Body&& body);
  [[noreturn]] void fail(comm::CommErrorKind kind, const char* op, std::string_view label, std::vector<int> peers,
                         const std::string& detail) override;
  void set_device() { check(cudaSetDevice(w_.device), "cudaSetDevice"); }

  // The host exchange of a device collective: out[i] goes to member i; returns what each member
  // sent this rank (the self entry is out[self]).
  std::vector<Handoff> exchange(std::span<const int> group, const std::vector<Handoff>& out, std::string_view label);
  // Checks every member's Handoff against this call (operation, shared sizes, expected bytes); on a
  // disagreement releases this call's parcels and fails with kind mismatch.
  template <class Expected>
  void check_handoffs(const char* op, std::string_view label, std::span<const int> group, std::size_t self,
                      const std::vector<Handoff>& got, Op want, std::uint64_t fingerprint, Expected expected_bytes,
                      cudaStream_t stream);
  // Releases a parcel without reading it (error paths).
  void discard(std::uint64_t id, cudaStream_t stream) noexcept;

  Shared& w_;
  comm::Communicator& host_;
  const int rank_;
};

template <class Body>
void VirtualRankComm::guarded(const char* op, std::string_view label, Body&& body) {
  try {
    body();
  } catch (const comm::CommError& e) {
    throw with_operation(e, op);
  } catch (const CudaError& e) {
    const comm::CommError ce(comm::CommErrorKind::transport, rank_, op, std::string(label), {}, rank_,
                             std::string("failed on the device: ") + e.what());
    host_.abort(ce.what());
    throw ce;
  } catch (const std::logic_error& e) {
    const comm::CommError ce(comm::CommErrorKind::transport, rank_, op, std::string(label), {}, rank_, e.what());
    host_.abort(ce.what());
    throw ce;
  }
}

void VirtualRankComm::fail(comm::CommErrorKind kind, const char* op, std::string_view label, std::vector<int> peers,
                           const std::string& detail) {
  const comm::CommError e(kind, rank_, op, std::string(label), std::move(peers), rank_, detail);
  host_.abort(e.what());
  throw e;
}

std::vector<Handoff> VirtualRankComm::exchange(std::span<const int> group, const std::vector<Handoff>& out,
                                               std::string_view label) {
  const std::size_t n = group.size();
  std::vector<Handoff> in(n);
  std::vector<comm::ConstBytes> send(n);
  std::vector<comm::MutableBytes> recv(n);
  for (std::size_t i = 0; i < n; ++i) {
    send[i] = {&out[i], sizeof(Handoff)};
    recv[i] = {&in[i], sizeof(Handoff)};
  }
  host_.all_to_all_v(group, send, std::span<const comm::MutableBytes>(recv), label);
  return in;
}

void VirtualRankComm::discard(std::uint64_t id, cudaStream_t stream) noexcept {
  if (id == 0) return;
  try {
    Received r(w_, id, stream);
  } catch (...) {
    // Already failing; the world's destructor frees what is left.
  }
}

template <class Expected>
void VirtualRankComm::check_handoffs(const char* op, std::string_view label, std::span<const int> group,
                                     std::size_t self, const std::vector<Handoff>& got, Op want,
                                     std::uint64_t fingerprint, Expected expected_bytes, cudaStream_t stream) {
  for (std::size_t i = 0; i < group.size(); ++i) {
    if (i == self) continue;
    const Handoff& h = got[i];
    std::string problem;
    if (h.magic != kMagic) {
      problem = "rank " + std::to_string(group[i]) + " made a host all_to_all_v, not a device collective";
    } else if (h.op != static_cast<std::uint32_t>(want)) {
      problem = "met rank " + std::to_string(group[i]) + "'s device " + op_name(h.op);
    } else if (h.fingerprint != fingerprint) {
      problem = "rank " + std::to_string(group[i]) + " passed other sizes (counts must be the same on every member)";
    } else if (h.bytes != expected_bytes(i)) {
      problem = "expected " + std::to_string(expected_bytes(i)) + " bytes from rank " + std::to_string(group[i]) +
                ", it sent " + std::to_string(h.bytes);
    }
    if (problem.empty()) continue;
    for (std::size_t k = 0; k < group.size(); ++k) {
      if (k != self && got[k].magic == kMagic) discard(got[k].parcel, stream);
    }
    fail(comm::CommErrorKind::mismatch, op, label, {group[i]}, problem + " (group " + group_text(group) + ")");
  }
}

void VirtualRankComm::send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label,
                           cudaStream_t stream) {
  guarded("send", label, [&] {
    check_p2p("send", label, peer, tag, data, bytes, "the send buffer");
    set_device();
    Handoff h = handoff(Op::send);
    h.bytes = bytes;
    h.parcel = w_.post(data, bytes, false, stream);
    try {
      host_.send(peer, tag, &h, sizeof h, label);
    } catch (...) {
      discard(h.parcel, stream);  // the host posts nothing when it throws
      throw;
    }
  });
}

void VirtualRankComm::recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label,
                           cudaStream_t stream) {
  guarded("recv", label, [&] {
    check_p2p("recv", label, peer, tag, data, bytes, "the receive buffer");
    set_device();
    Handoff h;
    host_.recv(peer, tag, &h, sizeof h, label);
    if (h.magic != kMagic || h.op != static_cast<std::uint32_t>(Op::send)) {
      fail(comm::CommErrorKind::mismatch, "recv", label, {peer},
           "the message from rank " + std::to_string(peer) + " with tag " + std::to_string(tag) +
               " is not a device send (a host send of 32 bytes?)");
    }
    if (h.bytes != bytes) {
      discard(h.parcel, stream);
      fail(comm::CommErrorKind::mismatch, "recv", label, {peer}, recv_size_problem(bytes, tag, peer, h.bytes));
    }
    Received r(w_, h.parcel, stream);
    copy_d2d(data, r.data(), r.bytes(), stream);
  });
}

void VirtualRankComm::all_to_all_v(std::span<const int> group, std::span<const comm::ConstBytes> send,
                                   std::span<const comm::MutableBytes> recv, std::string_view label,
                                   cudaStream_t stream) {
  const char* op = "all_to_all_v";
  guarded(op, label, [&] {
    const std::size_t self = check_all_to_all(op, label, group, send, recv);
    const std::size_t n = group.size();
    set_device();
    std::vector<Handoff> out(n, handoff(Op::all_to_all_v));
    for (std::size_t i = 0; i < n; ++i) {
      if (i == self) continue;
      out[i].bytes = send[i].size;
      out[i].parcel = w_.post(send[i].data, send[i].size, false, stream);
    }
    copy_d2d(recv[self].data, send[self].data, send[self].size, stream);
    const std::vector<Handoff> got = exchange(group, out, label);
    check_handoffs(op, label, group, self, got, Op::all_to_all_v, 0, [&](std::size_t i) { return recv[i].size; },
                   stream);
    for (std::size_t i = 0; i < n; ++i) {
      if (i == self) continue;
      Received r(w_, got[i].parcel, stream);
      copy_d2d(recv[i].data, r.data(), r.bytes(), stream);
    }
  });
}

void VirtualRankComm::reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                                         std::span<const std::size_t> counts, std::string_view label,
                                         cudaStream_t stream) {
  const char* op = "reduce_scatter_sum";
  guarded(op, label, [&] {
    const Blocks b = check_blocks(op, label, group, counts, "counts");
    const std::size_t n = group.size();
    check_buffer(op, label, in, b.offset.back() * sizeof(float), "the input");
    check_buffer(op, label, out, b.mine * sizeof(float), "the output");
    set_device();
    const std::uint64_t fingerprint = sizes_fingerprint(counts);
    std::vector<Handoff> h(n, handoff(Op::reduce_scatter_sum, fingerprint));
    for (std::size_t i = 0; i < n; ++i) {
      if (i == b.self) continue;
      h[i].bytes = counts[i] * sizeof(float);
      h[i].parcel = w_.post(in + b.offset[i], counts[i] * sizeof(float), false, stream);
    }
    // The own block is read after `out` is first written unless this rank is member 0 and sums in
    // place; keep a copy when `out` overlaps it otherwise.
    const float* own = in + b.offset[b.self];
    const bool keep_own = b.mine > 0 && ranges_overlap(out, b.mine * sizeof(float), own, b.mine * sizeof(float)) &&
                          !(b.self == 0 && out == own);
    StreamScratch own_copy(stream);
    if (keep_own) own = static_cast<const float*>(snapshot(w_, own_copy, own, b.mine * sizeof(float), stream));
    const std::vector<Handoff> got = exchange(group, h, label);
    check_handoffs(op, label, group, b.self, got, Op::reduce_scatter_sum, fingerprint,
                   [&](std::size_t) { return b.mine * sizeof(float); }, stream);
    std::vector<Received> parts(n);
    for (std::size_t i = 0; i < n; ++i) {
      if (i != b.self) parts[i] = Received(w_, got[i].parcel, stream);
    }
    if (b.mine == 0) return;
    // Group order, as the host: out = in_0; out += in_1; out += in_2; ...
    for (std::size_t m = 0; m < n; ++m) {
      const float* src = m == b.self ? own : static_cast<const float*>(parts[m].data());
      if (m == 0) {
        copy_d2d(out, src, b.mine * sizeof(float), stream);
      } else {
        add_inplace(out, src, b.mine, stream);  // one __fadd_rn per element
      }
    }
  });
}

void VirtualRankComm::all_gather_v(std::span<const int> group, const void* in, void* out,
                                   std::span<const std::size_t> bytes_per_member, std::string_view label,
                                   cudaStream_t stream) {
  const char* op = "all_gather_v";
  guarded(op, label, [&] {
    const Blocks b = check_blocks(op, label, group, bytes_per_member, "sizes");
    const std::size_t n = group.size();
    check_buffer(op, label, in, b.mine, "the input");
    check_buffer(op, label, out, b.offset[n], "the output");
    set_device();
    auto* o = static_cast<std::byte*>(out);
    const std::uint64_t fingerprint = sizes_fingerprint(bytes_per_member);
    std::vector<Handoff> h(n, handoff(Op::all_gather_v, fingerprint));
    for (std::size_t i = 0; i < n; ++i) {
      if (i == b.self) continue;
      h[i].bytes = b.mine;
      h[i].parcel = w_.post(in, b.mine, false, stream);
    }
    // In place (`in` is the own slot) needs nothing; an `in` overlapping other slots is copied
    // before they are written.
    const bool in_place = in == o + b.offset[b.self];
    const bool keep_own = b.mine > 0 && !in_place && ranges_overlap(in, b.mine, out, b.offset[n]);
    StreamScratch own_copy(stream);
    const void* own = keep_own ? snapshot(w_, own_copy, in, b.mine, stream) : in;
    const std::vector<Handoff> got = exchange(group, h, label);
    check_handoffs(op, label, group, b.self, got, Op::all_gather_v, fingerprint,
                   [&](std::size_t i) { return bytes_per_member[i]; }, stream);
    for (std::size_t i = 0; i < n; ++i) {
      if (i == b.self) continue;
      Received r(w_, got[i].parcel, stream);
      copy_d2d(o + b.offset[i], r.data(), r.bytes(), stream);
    }
    if (!in_place) copy_d2d(o + b.offset[b.self], own, b.mine, stream);
  });
}

void VirtualRankComm::barrier(std::span<const int> group, std::string_view label, cudaStream_t stream) {
  const char* op = "barrier";
  guarded(op, label, [&] {
    const std::size_t self = check_group(op, label, group);
    const std::size_t n = group.size();
    set_device();
    std::vector<Handoff> h(n, handoff(Op::barrier));
    for (std::size_t i = 0; i < n; ++i) {
      if (i != self) h[i].parcel = w_.post(nullptr, 0, true, stream);
    }
    const std::vector<Handoff> got = exchange(group, h, label);
    check_handoffs(op, label, group, self, got, Op::barrier, 0, [](std::size_t) { return std::size_t{0}; }, stream);
    for (std::size_t i = 0; i < n; ++i) {
      if (i == self) continue;
      const Received r(w_, got[i].parcel, stream);  // `stream` waits for member i's event
    }
  });
}

}  // namespace

// ------------------------------------------------------------------------------- the world

VirtualRankWorld::VirtualRankWorld(int ranks, int device, const comm::CommOptions& options)
    : shared_(std::make_unique<Shared>(ranks, device, options)) {
  for (int r = 0; r < ranks; ++r) comms_.push_back(std::make_unique<VirtualRankComm>(*shared_, r));
}

VirtualRankWorld::~VirtualRankWorld() {
  comms_.clear();
  shared_.reset();
}

int VirtualRankWorld::size() const { return shared_->host.size(); }

int VirtualRankWorld::device() const { return shared_->device; }

DeviceCommunicator& VirtualRankWorld::comm(int rank) {
  if (rank < 0 || rank >= size()) {
    throw comm::CommError(comm::CommErrorKind::invalid_argument, -1, "VirtualRankWorld::comm", "", {}, -1,
                          "rank " + std::to_string(rank) + " is not a rank of this world of " + std::to_string(size()));
  }
  return *comms_[idx(rank)];
}

comm::World& VirtualRankWorld::host_world() { return shared_->host; }

std::string VirtualRankWorld::describe() const {
  return "virtual ranks: " + std::to_string(size()) + " on device " + std::to_string(shared_->device);
}

std::optional<comm::Failure> VirtualRankWorld::failure() const { return shared_->host.failure(); }

std::vector<std::string> VirtualRankWorld::undelivered() {
  std::vector<std::string> lines = shared_->host.undelivered();
  shared_->release_all_parcels();
  return lines;
}

std::size_t VirtualRankWorld::staging_bytes_in_use() const {
  return shared_->pool_attribute(cudaMemPoolAttrUsedMemCurrent);
}

std::size_t VirtualRankWorld::staging_bytes_reserved() const {
  return shared_->pool_attribute(cudaMemPoolAttrReservedMemCurrent);
}

void VirtualRankWorld::trim() { shared_->trim(); }

std::size_t VirtualRankWorld::parcels_in_flight() const { return shared_->in_flight(); }

}  // namespace tandem::cuda
