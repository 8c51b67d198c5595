#include "exec/backends/cuda/comm/nccl_comm.h"

#if !TANDEM_HAVE_NCCL

namespace tandem::cuda {
bool nccl_built() { return false; }
}  // namespace tandem::cuda

#else

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>

#include <nccl.h>

#include "common/signed_index.h"
#include "exec/comm/comm_error.h"
#include "exec/comm/in_process.h"
#include "exec/backends/cuda/infra/cuda_check.h"

namespace tandem::cuda {

bool nccl_built() { return true; }

namespace {

using Clock = std::chrono::steady_clock;
using comm::CommError;
using comm::CommErrorKind;

constexpr std::uint32_t kTicketMagic = 0x4e43434c;
constexpr auto kWatchdogPeriod = std::chrono::milliseconds(2);

// The host message that goes with every device send (nccl_comm.h: the issue-order check).
struct Ticket {
  std::uint32_t magic = kTicketMagic;
  std::uint32_t to_self = 0;  // 1: a staged copy to this same rank, handed over below
  std::uint64_t seq = 0;      // the sender's earlier sends to this receiver (not counting to-self)
  std::uint64_t bytes = 0;
  std::uint64_t staging = 0;  // to_self: device pointer from cudaMallocAsync (0 when bytes == 0)
  std::uint64_t event = 0;    // to_self: cudaEvent_t recorded after the copy (0 when bytes == 0)
};
static_assert(sizeof(Ticket) == 40, "the p2p ticket is 40 bytes");

std::string nccl_text(ncclResult_t r) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(nullptr);
  if (last && *last) s += " (" + std::string(last) + ")";
  return s;
}

bool nccl_ok(ncclResult_t r) { return r == ncclSuccess || r == ncclInProgress; }

std::vector<int> iota_ranks(int n) {
  std::vector<int> v(idx(n));
  for (int i = 0; i < n; ++i) v[idx(i)] = i;
  return v;
}

}  // namespace

int nccl_version() {
  int v = 0;
  const ncclResult_t r = ncclGetVersion(&v);
  if (r != ncclSuccess) throw CommError(CommErrorKind::transport, -1, "ncclGetVersion", "", {}, -1, nccl_text(r));
  return v;
}

// ------------------------------------------------------------------------------------ Impl

class NcclCommunicator::Impl {
 public:
  // One NCCL communicator: the world's (p2p) or a group's (collectives).
  struct Channel {
    std::vector<int> members;  // world ranks in group order; empty until initialised
    int index = 0;             // this rank's index in members (its NCCL rank)
    std::atomic<ncclComm_t> comm{nullptr};  // null before init and after abort
    float* scratch = nullptr;  // the barrier's one float
    std::mutex m;              // one NCCL call on this communicator at a time
  };
  struct Call {
    const char* op;
    std::string label;
    Clock::time_point deadline;
  };

  Impl(comm::Communicator& h, int dev, const comm::CommOptions& opts)
      : host(h), rank(h.rank()), size(h.size()), device(dev), options(opts),
        sent_to_(idx(size), 0), received_from_(idx(size), 0) {}
  ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  comm::Communicator& host;
  const int rank;
  const int size;
  const int device;
  const comm::CommOptions options;
  Channel p2p;

  // Bootstraps.
  void adopt_world(ncclComm_t comm);  // (a): from ncclCommInitAll
  void init_world();                  // (b): unique id through the host world
  void start_watchdog();

  // Runs one operation: host CommErrors come out under `op` and mark this rank failed; CUDA
  // failures become kind transport.
  template <class Body>
  void run(const char* op, std::string_view label, Body&& body);
  Call begin(const char* op, std::string_view label);
  [[noreturn]] void fail(CommErrorKind kind, const Call& c, std::vector<int> peers, const std::string& detail);
  void record(const CommError& e, bool tell_host);
  void check_cuda(const Call& c, cudaError_t err, const char* what);
  void check_nccl(const Call& c, ncclResult_t r, const char* what);
  // After an NCCL call on `ch`: success, or poll ncclInProgress (non-blocking communicators) until
  // done, failed or past the call's deadline.
  void settle(Channel& ch, const Call& c, ncclResult_t r, const char* what);
  std::unique_lock<std::mutex> lock_channel(Channel& ch, const Call& c);
  // The group's channel, created on first use; returned locked (`lock`).
  Channel& group_channel(const Call& c, std::span<const int> group, std::unique_lock<std::mutex>& lock);
  // Records an event on `stream` after the call's NCCL work for the watchdog.
  void track(const Call& c, cudaStream_t stream);
  // One collective on the group's NCCL communicator: body(channel, comm) under the channel's lock,
  // then track(c, stream).
  template <class Body>
  void collective(const Call& c, std::span<const int> group, cudaStream_t stream, Body&& body);
  // ncclGroupStart; issue(note), where each NCCL call's result goes to note(result, name);
  // ncclGroupEnd (always: a group left open would swallow later calls); then the first failure.
  template <class Issue>
  void grouped(Channel& ch, const Call& c, Issue&& issue);

  // p2p state (guarded by p2p.m).
  std::vector<std::uint64_t> sent_to_;
  std::vector<std::uint64_t> received_from_;

  // Staged copies to self not yet received (guarded by self_m_): staging -> event.
  std::mutex self_m_;
  std::unordered_map<void*, cudaEvent_t> self_parcels_;

 private:
  void init_channel(Channel& ch, const Call& c, std::span<const int> members);
  void watchdog_loop();
  void poll();
  void abort_channels();
  std::vector<Channel*> channels();

  std::mutex groups_m_;
  std::map<std::vector<int>, std::unique_ptr<Channel>> groups_;

  std::mutex fail_m_;
  std::optional<CommError> first_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> all_aborted_{false};

  struct Pending {
    cudaEvent_t done;
    const char* op;
    std::string label;
    Clock::time_point deadline;
  };
  std::mutex pending_m_;
  std::vector<Pending> pending_;
  std::vector<cudaEvent_t> free_events_;
  std::vector<cudaEvent_t> all_events_;

  std::mutex wd_m_;
  std::condition_variable wd_cv_;
  bool stop_ = false;
  std::thread watchdog_;
};

template <class Body>
void NcclCommunicator::Impl::run(const char* op, std::string_view label, Body&& body) {
  try {
    body();
  } catch (const CommError& e) {
    record(e, false);  // own failures were recorded (and told) by fail(); this notes host ones
    throw with_operation(e, op);
  } catch (const CudaError& e) {
    const CommError ce(CommErrorKind::transport, rank, op, std::string(label), {}, rank,
                       std::string("failed on the device: ") + e.what());
    record(ce, true);
    throw ce;
  }
}

NcclCommunicator::Impl::Call NcclCommunicator::Impl::begin(const char* op, std::string_view label) {
  Call c{op, std::string(label), Clock::now() + options.timeout};
  if (failed_) {
    std::lock_guard lock(fail_m_);
    const int first = first_ ? first_->first_failed_rank() : rank;
    throw CommError(CommErrorKind::peer_failed, rank, op, c.label, {}, first,
                    "aborted: rank " + std::to_string(first) + " failed first (" +
                        (first_ ? std::string(first_->what()) : std::string("abort")) + ")");
  }
  check_cuda(c, cudaSetDevice(device), "cudaSetDevice");
  return c;
}

void NcclCommunicator::Impl::record(const CommError& e, bool tell_host) {
  {
    std::lock_guard lock(fail_m_);
    if (!first_) first_ = e;
    failed_ = true;
  }
  if (tell_host) host.abort(e.what());
  wd_cv_.notify_all();
}

void NcclCommunicator::Impl::fail(CommErrorKind kind, const Call& c, std::vector<int> peers,
                                  const std::string& detail) {
  const CommError e(kind, rank, c.op, c.label, std::move(peers), rank, detail);
  record(e, true);
  throw e;
}

void NcclCommunicator::Impl::check_cuda(const Call& c, cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  fail(CommErrorKind::transport, c, {},
       std::string(what) + " failed: " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

void NcclCommunicator::Impl::check_nccl(const Call& c, ncclResult_t r, const char* what) {
  if (nccl_ok(r)) return;
  fail(CommErrorKind::transport, c, {}, std::string(what) + " failed: " + nccl_text(r));
}

void NcclCommunicator::Impl::settle(Channel& ch, const Call& c, ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return;
  check_nccl(c, r, what);
  for (;;) {
    ncclResult_t state = ncclSuccess;
    check_nccl(c, ncclCommGetAsyncError(ch.comm.load(), &state), "ncclCommGetAsyncError");
    if (state == ncclSuccess) return;
    check_nccl(c, state, what);
    if (Clock::now() > c.deadline) {
      fail(CommErrorKind::timeout, c, {},
           std::string(what) + " still in progress after " + std::to_string(options.timeout.count()) + " ms");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

std::unique_lock<std::mutex> NcclCommunicator::Impl::lock_channel(Channel& ch, const Call& c) {
  std::unique_lock lock(ch.m);
  if (!ch.comm.load()) {
    lock.unlock();
    fail(CommErrorKind::peer_failed, c, {}, "aborted: this rank's NCCL communicators were aborted after a failure");
  }
  return lock;
}

void NcclCommunicator::Impl::init_channel(Channel& ch, const Call& c, std::span<const int> members) {
  const GroupCheck g = tandem::cuda::check_group(members, rank, size);
  const int n = static_cast<int>(members.size());
  ncclUniqueId id{};
  if (g.self == 0) check_nccl(c, ncclGetUniqueId(&id), "ncclGetUniqueId");
  std::vector<ncclUniqueId> ids(members.size());
  host.all_gather(members, &id, sizeof id, ids.data(), c.label);
  ncclComm_t comm = nullptr;
  const ncclResult_t r = ncclCommInitRank(&comm, n, ids[0], static_cast<int>(g.self));
  if (r != ncclSuccess) {
    fail(CommErrorKind::transport, c, {},
         "ncclCommInitRank for group " + group_text(members) + " failed: " + nccl_text(r));
  }
  float* scratch = nullptr;
  cudaError_t err = cudaMalloc(reinterpret_cast<void**>(&scratch), sizeof(float));
  if (err == cudaSuccess) err = cudaMemset(scratch, 0, sizeof(float));
  // cudaMemset runs on the default stream, which the callers' (non-blocking) streams do not wait for.
  if (err == cudaSuccess) err = cudaStreamSynchronize(nullptr);
  if (err != cudaSuccess) {
    if (scratch) cudaFree(scratch);
    ncclCommDestroy(comm);
    check_cuda(c, err, "cudaMalloc (barrier scratch)");
  }
  ch.members.assign(members.begin(), members.end());
  ch.index = static_cast<int>(g.self);
  ch.scratch = scratch;
  ch.comm.store(comm);
}

void NcclCommunicator::Impl::adopt_world(ncclComm_t comm) {
  std::lock_guard lock(p2p.m);
  p2p.members = iota_ranks(size);
  p2p.index = rank;
  p2p.comm.store(comm);
}

void NcclCommunicator::Impl::init_world() {
  const std::vector<int> all = iota_ranks(size);
  run("init_rank", "NCCL bootstrap", [&] {
    const Call c = begin("init_rank", "NCCL bootstrap");
    std::lock_guard lock(p2p.m);
    init_channel(p2p, c, all);
  });
}

NcclCommunicator::Impl::Channel& NcclCommunicator::Impl::group_channel(const Call& c, std::span<const int> group,
                                                                        std::unique_lock<std::mutex>& lock) {
  Channel* ch = nullptr;
  {
    std::lock_guard g(groups_m_);
    std::unique_ptr<Channel>& slot = groups_[std::vector<int>(group.begin(), group.end())];
    if (!slot) slot = std::make_unique<Channel>();
    ch = slot.get();
  }
  lock = std::unique_lock(ch->m);
  if (!ch->comm.load()) {
    if (!ch->members.empty()) {
      lock.unlock();
      fail(CommErrorKind::peer_failed, c, {}, "aborted: this rank's NCCL communicators were aborted after a failure");
    }
    init_channel(*ch, c, group);  // this rank's first collective on the group
  }
  return *ch;
}

void NcclCommunicator::Impl::track(const Call& c, cudaStream_t stream) {
  cudaEvent_t e = nullptr;
  {
    std::lock_guard lock(pending_m_);
    if (!free_events_.empty()) {
      e = free_events_.back();
      free_events_.pop_back();
    }
  }
  if (!e) {
    check_cuda(c, cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    std::lock_guard lock(pending_m_);
    all_events_.push_back(e);
  }
  const cudaError_t err = cudaEventRecord(e, stream);
  if (err != cudaSuccess) {
    std::lock_guard lock(pending_m_);
    free_events_.push_back(e);
  }
  check_cuda(c, err, "cudaEventRecord (watchdog)");
  std::lock_guard lock(pending_m_);
  pending_.push_back({e, c.op, c.label, c.deadline});
}

template <class Body>
void NcclCommunicator::Impl::collective(const Call& c, std::span<const int> group, cudaStream_t stream, Body&& body) {
  {
    std::unique_lock<std::mutex> lock;
    Channel& ch = group_channel(c, group, lock);
    body(ch, ch.comm.load());
  }
  track(c, stream);
}

template <class Issue>
void NcclCommunicator::Impl::grouped(Channel& ch, const Call& c, Issue&& issue) {
  check_nccl(c, ncclGroupStart(), "ncclGroupStart");
  ncclResult_t first = ncclSuccess;
  const char* first_what = "";
  issue([&](ncclResult_t r, const char* what) {
    if (!nccl_ok(r) && first == ncclSuccess) {
      first = r;
      first_what = what;
    }
  });
  const ncclResult_t end = ncclGroupEnd();
  check_nccl(c, first, first_what);
  settle(ch, c, end, "ncclGroupEnd");
}

// ------------------------------------------------------------------------------- watchdog

void NcclCommunicator::Impl::start_watchdog() { watchdog_ = std::thread([this] { watchdog_loop(); }); }

void NcclCommunicator::Impl::watchdog_loop() {
  cudaSetDevice(device);  // for cudaEventQuery
  std::unique_lock lock(wd_m_);
  while (!stop_) {
    wd_cv_.wait_for(lock, kWatchdogPeriod);
    if (stop_) break;
    lock.unlock();
    poll();
    lock.lock();
  }
}

std::vector<NcclCommunicator::Impl::Channel*> NcclCommunicator::Impl::channels() {
  std::vector<Channel*> all{&p2p};
  std::lock_guard lock(groups_m_);
  for (auto& [members, ch] : groups_) all.push_back(ch.get());
  return all;
}

void NcclCommunicator::Impl::poll() {
  if (!failed_) {
    std::optional<CommError> error;
    {
      std::lock_guard lock(pending_m_);
      const Clock::time_point now = Clock::now();
      std::size_t kept = 0;
      for (std::size_t i = 0; i < pending_.size(); ++i) {
        Pending& p = pending_[i];
        const cudaError_t q = error ? cudaErrorNotReady : cudaEventQuery(p.done);
        if (q == cudaSuccess) {
          free_events_.push_back(p.done);
          continue;
        }
        if (!error && q != cudaErrorNotReady) {
          error.emplace(CommErrorKind::transport, rank, p.op, p.label, std::vector<int>{}, rank,
                        std::string("failed on the device: ") + cudaGetErrorName(q) + ": " + cudaGetErrorString(q));
        } else if (!error && now > p.deadline) {
          error.emplace(CommErrorKind::timeout, rank, p.op, p.label, std::vector<int>{}, rank,
                        "did not complete on the device within " + std::to_string(options.timeout.count()) +
                            " ms (a peer never joined?); this rank's NCCL communicators are aborted");
        }
        if (kept != i) pending_[kept] = std::move(p);
        ++kept;
      }
      pending_.resize(kept);
    }
    if (!error) {
      for (Channel* ch : channels()) {
        const ncclComm_t comm = ch->comm.load();
        if (!comm) continue;
        ncclResult_t state = ncclSuccess;
        const ncclResult_t q = ncclCommGetAsyncError(comm, &state);
        const ncclResult_t bad = q != ncclSuccess ? q : state;
        if (nccl_ok(bad)) continue;
        error.emplace(CommErrorKind::transport, rank, "NCCL", group_text(ch->members), std::vector<int>{}, rank,
                      "asynchronous NCCL error: " + nccl_text(bad) + "; this rank's NCCL communicators are aborted");
        break;
      }
    }
    if (error) record(*error, true);
  }
  if (failed_ && !all_aborted_) abort_channels();
}

void NcclCommunicator::Impl::abort_channels() {
  bool all = true;
  for (Channel* ch : channels()) {
    // Never under a thread that is inside an NCCL call on the communicator: try again next period.
    std::unique_lock lock(ch->m, std::try_to_lock);
    if (!lock.owns_lock()) {
      all = false;
      continue;
    }
    if (const ncclComm_t comm = ch->comm.exchange(nullptr)) ncclCommAbort(comm);
  }
  all_aborted_ = all;
}

NcclCommunicator::Impl::~Impl() {
  // Let the rank's NCCL work finish; the watchdog turns a stall into a failure and aborts.
  if (watchdog_.joinable()) {
    const Clock::time_point until = Clock::now() + options.timeout + std::chrono::seconds(1);
    while (Clock::now() < until && !(failed_ && all_aborted_)) {
      {
        std::lock_guard lock(pending_m_);
        if (pending_.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    {
      std::lock_guard lock(wd_m_);
      stop_ = true;
    }
    wd_cv_.notify_all();
    watchdog_.join();
  }
  cudaSetDevice(device);
  bool unfinished = false;
  {
    std::lock_guard lock(pending_m_);
    for (const Pending& p : pending_) unfinished = unfinished || cudaEventQuery(p.done) != cudaSuccess;
  }
  const bool abort = failed_ || unfinished;
  for (Channel* ch : channels()) {
    std::lock_guard lock(ch->m);
    if (const ncclComm_t comm = ch->comm.exchange(nullptr)) {
      if (abort) {
        ncclCommAbort(comm);
      } else {
        ncclCommDestroy(comm);
      }
    }
    if (ch->scratch) cudaFree(ch->scratch);
    ch->scratch = nullptr;
  }
  {
    std::lock_guard lock(self_m_);
    for (auto& [staging, event] : self_parcels_) {
      cudaEventSynchronize(event);
      cudaFree(staging);
      cudaEventDestroy(event);
    }
    self_parcels_.clear();
  }
  for (cudaEvent_t e : all_events_) cudaEventDestroy(e);
}

// --------------------------------------------------------------------------- operations

NcclCommunicator::NcclCommunicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclCommunicator::~NcclCommunicator() = default;

std::unique_ptr<NcclCommunicator> NcclCommunicator::init_rank(comm::Communicator& host, int device,
                                                              const comm::CommOptions& options) {
  auto impl = std::make_unique<Impl>(host, device, options);
  impl->init_world();
  impl->start_watchdog();
  return std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl)));
}

int NcclCommunicator::rank() const { return impl_->rank; }
int NcclCommunicator::size() const { return impl_->size; }
int NcclCommunicator::device() const { return impl_->device; }
comm::Communicator& NcclCommunicator::host() { return impl_->host; }

std::string NcclCommunicator::describe() const {
  return "NCCL rank " + std::to_string(impl_->rank) + " of " + std::to_string(impl_->size) + " on device " +
         std::to_string(impl_->device);
}

void NcclCommunicator::abort(std::string_view reason) {
  const CommError e(CommErrorKind::aborted, impl_->rank, "abort", std::string(reason), {}, impl_->rank,
                    "called abort");
  impl_->record(e, false);
  impl_->host.abort(reason);
}

void NcclCommunicator::fail(comm::CommErrorKind kind, const char* op, std::string_view label, std::vector<int> peers,
                            const std::string& detail) {
  impl_->fail(kind, Impl::Call{op, std::string(label), Clock::now()}, std::move(peers), detail);
}

void NcclCommunicator::send(int peer, int tag, const void* data, std::size_t bytes, std::string_view label,
                            cudaStream_t stream) {
  Impl& m = *impl_;
  const char* op = "send";
  m.run(op, label, [&] {
    const Impl::Call c = m.begin(op, label);
    check_p2p(op, label, peer, tag, data, bytes, "the send buffer");
    Ticket t;
    t.bytes = bytes;
    if (peer == m.rank) {
      // NCCL pairs a send to self only with a recv in the same group: stage a copy instead. The
      // staging and its event belong to the recv from here on (the destructor frees leftovers).
      t.to_self = 1;
      void* staging = nullptr;
      cudaEvent_t ready = nullptr;
      if (bytes) {
        m.check_cuda(c, cudaMallocAsync(&staging, bytes, stream), "cudaMallocAsync (send to self)");
        cudaError_t err = cudaMemcpyAsync(staging, data, bytes, cudaMemcpyDeviceToDevice, stream);
        if (err == cudaSuccess) err = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming);
        if (err == cudaSuccess) err = cudaEventRecord(ready, stream);
        if (err != cudaSuccess) {
          cudaFreeAsync(staging, stream);  // stream-ordered after the copy, if that was enqueued
          if (ready) cudaEventDestroy(ready);
          m.check_cuda(c, err, "staging a send to self");
        }
        std::lock_guard lock(m.self_m_);
        m.self_parcels_.emplace(staging, ready);
      }
      t.staging = reinterpret_cast<std::uintptr_t>(staging);
      t.event = reinterpret_cast<std::uintptr_t>(ready);
      try {
        m.host.send(peer, tag, &t, sizeof t, label);
      } catch (...) {
        if (staging) {
          {
            std::lock_guard lock(m.self_m_);
            m.self_parcels_.erase(staging);
          }
          cudaFreeAsync(staging, stream);
          cudaEventDestroy(ready);
        }
        throw;
      }
      return;
    }
    {
      std::unique_lock lock = m.lock_channel(m.p2p, c);
      t.seq = m.sent_to_[idx(peer)];
      m.host.send(peer, tag, &t, sizeof t, label);
      ++m.sent_to_[idx(peer)];
      if (bytes) m.settle(m.p2p, c, ncclSend(data, bytes, ncclInt8, peer, m.p2p.comm.load(), stream), "ncclSend");
    }
    m.track(c, stream);
  });
}

void NcclCommunicator::recv(int peer, int tag, void* data, std::size_t bytes, std::string_view label,
                            cudaStream_t stream) {
  Impl& m = *impl_;
  const char* op = "recv";
  m.run(op, label, [&] {
    const Impl::Call c = m.begin(op, label);
    check_p2p(op, label, peer, tag, data, bytes, "the receive buffer");
    Ticket t;
    m.host.recv(peer, tag, &t, sizeof t, label);
    if (t.magic != kTicketMagic || t.to_self != (peer == m.rank ? 1u : 0u)) {
      m.fail(CommErrorKind::mismatch, c, {peer},
             "the message from rank " + std::to_string(peer) + " with tag " + std::to_string(tag) +
                 " is not a device send (a host send of 40 bytes?)");
    }
    if (peer == m.rank) {
      auto* staging = reinterpret_cast<void*>(static_cast<std::uintptr_t>(t.staging));
      auto* ready = reinterpret_cast<cudaEvent_t>(static_cast<std::uintptr_t>(t.event));
      cudaError_t err = cudaSuccess;
      if (staging) {
        {
          std::lock_guard lock(m.self_m_);
          m.self_parcels_.erase(staging);
        }
        err = cudaStreamWaitEvent(stream, ready, 0);
        if (err == cudaSuccess && t.bytes == bytes) {
          err = cudaMemcpyAsync(data, staging, bytes, cudaMemcpyDeviceToDevice, stream);
        }
        // The free must follow the sender's copy into staging: the wait orders it on `stream`;
        // without a wait, the host waits for the copy first.
        if (err != cudaSuccess) cudaEventSynchronize(ready);
        cudaFreeAsync(staging, stream);
        cudaEventDestroy(ready);  // a wait already enqueued is not affected
      }
      m.check_cuda(c, err, "receiving a send to self");
    }
    if (t.bytes != bytes) m.fail(CommErrorKind::mismatch, c, {peer}, recv_size_problem(bytes, tag, peer, t.bytes));
    if (peer == m.rank) return;
    {
      std::unique_lock lock = m.lock_channel(m.p2p, c);
      const std::uint64_t expected = m.received_from_[idx(peer)];
      if (t.seq != expected) {
        lock.unlock();
        m.fail(CommErrorKind::mismatch, c, {peer},
               "NCCL matches messages in issue order: this recv (tag " + std::to_string(tag) + ") would take rank " +
                   std::to_string(peer) + "'s send #" + std::to_string(expected) + ", but its send with this tag is #" +
                   std::to_string(t.seq) + "; receive from one peer in the order it sends");
      }
      ++m.received_from_[idx(peer)];
      if (bytes) m.settle(m.p2p, c, ncclRecv(data, bytes, ncclInt8, peer, m.p2p.comm.load(), stream), "ncclRecv");
    }
    m.track(c, stream);
  });
}

void NcclCommunicator::all_to_all_v(std::span<const int> group, std::span<const comm::ConstBytes> send,
                                    std::span<const comm::MutableBytes> recv, std::string_view label,
                                    cudaStream_t stream) {
  Impl& m = *impl_;
  const char* op = "all_to_all_v";
  m.run(op, label, [&] {
    const Impl::Call c = m.begin(op, label);
    check_all_to_all(op, label, group, send, recv);
    m.collective(c, group, stream, [&](Impl::Channel& ch, ncclComm_t comm) {
      m.grouped(ch, c, [&](auto&& note) {
        for (std::size_t i = 0; i < group.size(); ++i) {
          const int peer = static_cast<int>(i);
          if (send[i].size) note(ncclSend(send[i].data, send[i].size, ncclInt8, peer, comm, stream), "ncclSend");
          if (recv[i].size) note(ncclRecv(recv[i].data, recv[i].size, ncclInt8, peer, comm, stream), "ncclRecv");
        }
      });
    });
  });
}

void NcclCommunicator::reduce_scatter_sum(std::span<const int> group, const float* in, float* out,
                                          std::span<const std::size_t> counts, std::string_view label,
                                          cudaStream_t stream) {
  Impl& m = *impl_;
  const char* op = "reduce_scatter_sum";
  m.run(op, label, [&] {
    const Impl::Call c = m.begin(op, label);
    const Blocks b = check_blocks(op, label, group, counts, "counts");
    check_buffer(op, label, in, b.offset.back() * sizeof(float), "the input");
    check_buffer(op, label, out, b.mine * sizeof(float), "the output");
    const std::size_t n = group.size();
    const std::size_t most = *std::max_element(counts.begin(), counts.end());
    const bool equal = std::all_of(counts.begin(), counts.end(), [&](std::size_t k) { return k == most; });
    m.collective(c, group, stream, [&](Impl::Channel& ch, ncclComm_t comm) {
      if (most == 0) return;  // nothing to reduce anywhere
      if (equal) {
        m.settle(ch, c, ncclReduceScatter(in, out, most, ncclFloat32, ncclSum, comm, stream), "ncclReduceScatter");
        return;
      }
      // Pad every block to `most` floats with zeros; reduce in place; copy the own block out.
      StreamScratch padded_memory(stream);
      m.check_cuda(c, padded_memory.allocate(n * most * sizeof(float)), "cudaMallocAsync (padded reduce-scatter)");
      auto* padded = static_cast<float*>(padded_memory.get());
      m.check_cuda(c, cudaMemsetAsync(padded, 0, n * most * sizeof(float), stream), "cudaMemsetAsync (padding)");
      for (std::size_t i = 0; i < n; ++i) {
        if (!counts[i]) continue;
        m.check_cuda(c, cudaMemcpyAsync(padded + i * most, in + b.offset[i], counts[i] * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream),
                     "cudaMemcpyAsync (padding the reduce-scatter input)");
      }
      float* own = padded + b.self * most;
      m.settle(ch, c, ncclReduceScatter(padded, own, most, ncclFloat32, ncclSum, comm, stream),
               "ncclReduceScatter (padded)");
      if (b.mine) {
        m.check_cuda(c, cudaMemcpyAsync(out, own, b.mine * sizeof(float), cudaMemcpyDeviceToDevice, stream),
                     "cudaMemcpyAsync (own block of the padded reduce-scatter)");
      }
    });
  });
}

void NcclCommunicator::all_gather_v(std::span<const int> group, const void* in, void* out,
                                    std::span<const std::size_t> bytes_per_member, std::string_view label,
                                    cudaStream_t stream) {
  Impl& m = *impl_;
  const char* op = "all_gather_v";
  m.run(op, label, [&] {
    const Impl::Call c = m.begin(op, label);
    const Blocks b = check_blocks(op, label, group, bytes_per_member, "sizes");
    check_buffer(op, label, in, b.mine, "the input");
    check_buffer(op, label, out, b.offset.back(), "the output");
    auto* o = static_cast<std::byte*>(out);
    const bool equal = std::all_of(bytes_per_member.begin(), bytes_per_member.end(),
                                   [&](std::size_t k) { return k == bytes_per_member[0]; });
    m.collective(c, group, stream, [&](Impl::Channel& ch, ncclComm_t comm) {
      if (equal) {
        if (b.mine) m.settle(ch, c, ncclAllGather(in, out, b.mine, ncclInt8, comm, stream), "ncclAllGather");
        return;
      }
      if (b.mine && in != o + b.offset[b.self]) {
        m.check_cuda(c, cudaMemcpyAsync(o + b.offset[b.self], in, b.mine, cudaMemcpyDeviceToDevice, stream),
                     "cudaMemcpyAsync (own slot)");
      }
      m.grouped(ch, c, [&](auto&& note) {
        for (std::size_t i = 0; i < group.size(); ++i) {
          if (i == b.self) continue;
          const int peer = static_cast<int>(i);
          if (b.mine) note(ncclSend(in, b.mine, ncclInt8, peer, comm, stream), "ncclSend");
          if (bytes_per_member[i]) {
            note(ncclRecv(o + b.offset[i], bytes_per_member[i], ncclInt8, peer, comm, stream), "ncclRecv");
          }
        }
      });
    });
  });
}

void NcclCommunicator::barrier(std::span<const int> group, std::string_view label, cudaStream_t stream) {
  Impl& m = *impl_;
  const char* op = "barrier";
  m.run(op, label, [&] {
    const Impl::Call c = m.begin(op, label);
    check_group(op, label, group);
    m.collective(c, group, stream, [&](Impl::Channel& ch, ncclComm_t comm) {
      m.settle(ch, c, ncclAllReduce(ch.scratch, ch.scratch, 1, ncclFloat32, ncclSum, comm, stream),
               "ncclAllReduce (barrier)");
    });
  });
}

// ---------------------------------------------------------------------------- local world

namespace {
void destroy_concurrently(std::vector<std::unique_ptr<NcclCommunicator>>& comms) {
  std::vector<std::thread> threads;
  for (auto& c : comms) threads.emplace_back([&c] { c.reset(); });
  for (std::thread& t : threads) t.join();
  comms.clear();
}
}  // namespace

NcclLocalWorld::NcclLocalWorld(std::vector<int> devices, const comm::CommOptions& options)
    : devices_(std::move(devices)) {
  if (devices_.empty()) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
      throw CommError(CommErrorKind::invalid_argument, -1, "NcclLocalWorld", "", {}, -1,
                      std::string("no CUDA device (cudaGetDeviceCount: ") + cudaGetErrorString(err) + ")");
    }
    devices_ = iota_ranks(count);
  }
  const int n = static_cast<int>(devices_.size());
  host_ = std::make_unique<comm::InProcessWorld>(n, options);
  std::vector<ncclComm_t> raw(devices_.size(), nullptr);
  const ncclResult_t r = ncclCommInitAll(raw.data(), n, devices_.data());
  if (r != ncclSuccess) {
    throw CommError(CommErrorKind::transport, -1, "ncclCommInitAll", "", {}, -1,
                    std::to_string(n) + " devices: " + nccl_text(r));
  }
  try {
    for (int i = 0; i < n; ++i) {
      auto impl = std::make_unique<NcclCommunicator::Impl>(host_->comm(i), devices_[idx(i)],
                                                           options);
      impl->adopt_world(raw[idx(i)]);
      raw[idx(i)] = nullptr;
      impl->start_watchdog();
      comms_.push_back(std::unique_ptr<NcclCommunicator>(new NcclCommunicator(std::move(impl))));
    }
  } catch (...) {
    for (ncclComm_t c : raw) {
      if (c) ncclCommDestroy(c);
    }
    destroy_concurrently(comms_);
    throw;
  }
}

NcclLocalWorld::~NcclLocalWorld() {
  destroy_concurrently(comms_);
  host_.reset();
}

int NcclLocalWorld::size() const { return static_cast<int>(devices_.size()); }

NcclCommunicator& NcclLocalWorld::comm(int rank) {
  if (rank < 0 || rank >= size()) {
    throw CommError(CommErrorKind::invalid_argument, -1, "NcclLocalWorld::comm", "", {}, -1,
                    "rank " + std::to_string(rank) + " is not a rank of this world of " + std::to_string(size()));
  }
  return *comms_[idx(rank)];
}

comm::World& NcclLocalWorld::host_world() { return *host_; }

std::string NcclLocalWorld::describe() const {
  const int v = nccl_version();
  std::string s = "NCCL " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                  std::to_string(v % 100) + ", " + std::to_string(size()) + " rank" + (size() == 1 ? "" : "s") +
                  " on device" + (size() == 1 ? " " : "s ");
  for (std::size_t i = 0; i < devices_.size(); ++i) s += (i ? "," : "") + std::to_string(devices_[i]);
  return s;
}

}  // namespace tandem::cuda

#endif  // TANDEM_HAVE_NCCL
