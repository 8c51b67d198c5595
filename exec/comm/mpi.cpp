#include "exec/comm/mpi.h"

#include <mpi.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <list>
#include <mutex>
#include <string>
#include <thread>

#include "common/signed_index.h"
#include "exec/comm/rank_communicator.h"
#include "exec/comm/transport.h"

namespace tandem::comm {

namespace {

constexpr int kDataTag = 1;   // header + label + payload for one rank
constexpr int kAbortTag = 2;  // int32 rank + reason: the world failed
constexpr std::uint32_t kMagic = 0x746e6443;  // "Cdnt"

struct WireHeader {
  std::uint32_t magic;
  std::uint8_t space;
  std::uint8_t op;
  std::uint16_t pad;
  std::int32_t src;
  std::int32_t dst;
  std::uint64_t id;
  std::uint64_t seq;
  std::uint64_t label_bytes;
  std::uint64_t payload_bytes;
};

std::string mpi_error(int rc) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
  return std::string(text, idx(len));
}

[[noreturn]] void throw_transport(const std::string& what, const std::string& detail) {
  throw CommError(CommErrorKind::transport, -1, what, "", {}, -1, detail);
}

void check(int rc, const char* call) {
  if (rc != MPI_SUCCESS) throw_transport(call, mpi_error(rc));
}

const char* thread_level(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
    default: return "an unknown level";
  }
}

void ensure_mpi() {
  ensure_mpi_initialised(MPI_THREAD_MULTIPLE);
  int provided = MPI_THREAD_SINGLE;
  check(MPI_Query_thread(&provided), "MPI_Query_thread");
  if (provided < MPI_THREAD_MULTIPLE) {
    throw_transport("MpiWorld", std::string("MPI provides ") + thread_level(provided) +
                                    "; tandem runs several rank threads per process and needs "
                                    "MPI_THREAD_MULTIPLE (an MPI library built with thread support)");
  }
}

void append(std::vector<std::byte>& buf, const void* data, std::size_t bytes) {
  const auto* p = static_cast<const std::byte*>(data);
  buf.insert(buf.end(), p, p + bytes);
}

}  // namespace

namespace {

// MPI_Finalize at exit if this process initialised MPI — or MPI_Abort, when a failed world could
// not be torn down because a peer hangs (MPI_Finalize would wait for it): the error was reported
// by then, and the abort's code is the failure's exit code.
struct MpiSession {
  bool initialised_here = false;
  std::atomic<int> abort_code{0};
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!initialised_here || finalized) return;
    if (const int code = abort_code.load(); code != 0) MPI_Abort(MPI_COMM_WORLD, code);
    MPI_Finalize();
  }
};

MpiSession& session() {
  static MpiSession s;
  return s;
}

// The exit code of a failed rank (tandem's convention: 3).
constexpr int kFailedRankExitCode = 3;

}  // namespace

void ensure_mpi_initialised(int thread_level) {
  static std::mutex m;
  MpiSession& session = tandem::comm::session();
  std::lock_guard lock(m);
  int initialised = 0;
  check(MPI_Initialized(&initialised), "MPI_Initialized");
  if (initialised) return;
  int provided = MPI_THREAD_SINGLE;
  check(MPI_Init_thread(nullptr, nullptr, thread_level, &provided), "MPI_Init_thread");
  session.initialised_here = true;
}

class MpiWorld::Impl final : public Transport {
 public:
  Impl(int ranks, const CommOptions& options) : ranks_(ranks), options_(options) {
    if (ranks < 1) {
      throw CommError(CommErrorKind::invalid_argument, -1, "MpiWorld", "", {}, -1,
                      "a world needs at least one rank, not " + std::to_string(ranks));
    }
    if (options.timeout.count() <= 0 || options.world_timeout.count() <= 0) {
      throw CommError(CommErrorKind::invalid_argument, -1, "MpiWorld", "", {}, -1, "timeouts must be positive");
    }
    ensure_mpi();
    check(MPI_Comm_size(MPI_COMM_WORLD, &processes_), "MPI_Comm_size");
    check(MPI_Comm_rank(MPI_COMM_WORLD, &process_), "MPI_Comm_rank");
    if (ranks % processes_ != 0) {
      throw CommError(CommErrorKind::invalid_argument, -1, "MpiWorld", "", {}, -1,
                      std::to_string(ranks) + " ranks do not split evenly over " + std::to_string(processes_) +
                          " MPI processes (ranks % processes must be 0)");
    }
    per_process_ = ranks / processes_;
    first_ = process_ * per_process_;

    // A private communicator, so no other MPI traffic (nor an earlier world's) can match ours;
    // MPI_Comm_idup polled against the deadline, so a missing process is an error, not a hang.
    MPI_Request req = MPI_REQUEST_NULL;
    check(MPI_Comm_idup(MPI_COMM_WORLD, &comm_, &req), "MPI_Comm_idup");
    if (!wait_request(req, Clock::now() + options.world_timeout)) {
      throw_transport("MpiWorld", "process " + std::to_string(process_) + " of " + std::to_string(processes_) +
                                      ": timed out after " + std::to_string(options.world_timeout.count()) +
                                      " ms waiting for the other processes to create the world");
    }
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");

    for (int r = first_; r < first_ + per_process_; ++r) {
      local_.push_back(r);
      mailboxes_.push_back(std::make_unique<Mailbox>());
    }
    for (int r : local_) comms_.push_back(std::make_unique<RankCommunicator>(*this, r, options));
    progress_ = std::thread([this] { progress_loop(); });
  }

  ~Impl() override {
    // A failed world waits for its peers no longer than a call's watchdog: a peer that hangs
    // (stopped, deadlocked) would otherwise hold the survivors for the whole world_timeout.
    const bool failed = failure_.failed();
    stop_deadline_ = Clock::now() + (failed ? std::min(options_.timeout, options_.world_timeout) : options_.world_timeout);
    stop_.store(true, std::memory_order_release);
    progress_.join();
    if (shutdown_timed_out_ && failed) {
      // The failure travels on to the caller, who reports it; MPI cannot be finalised with a
      // peer that does not answer, so the process ends in MPI_Abort at exit, with its code.
      session().abort_code.store(kFailedRankExitCode);
      return;
    }
    if (shutdown_timed_out_) {
      std::fprintf(stderr,
                   "tandem comm: MPI process %d of %d: the world's shutdown timed out after %lld ms waiting "
                   "for the other processes (or for its sends to be received); calling MPI_Abort\n",
                   process_, processes_, static_cast<long long>(options_.world_timeout.count()));
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Comm_free(&comm_);
  }

  int size() const override { return ranks_; }

  void post(Message m) override {
    const int dst = m.dst;
    const int p = dst / per_process_;
    if (p == process_) {
      mailbox(dst).deliver(std::move(m));
      return;
    }
    const WireHeader h{kMagic,
                       static_cast<std::uint8_t>(m.key.space),
                       static_cast<std::uint8_t>(m.op),
                       0,
                       m.key.src,
                       dst,
                       m.key.id,
                       m.key.seq,
                       m.label.size(),
                       m.payload.size()};
    const std::size_t total = sizeof h + m.label.size() + m.payload.size();
    if (total > idx(INT_MAX)) {
      const std::string reason = "rank " + std::to_string(m.key.src) + ": " + to_string(m.op) + " \"" + m.label +
                                 "\": a message of " + std::to_string(m.payload.size()) +
                                 " bytes is more than one MPI message (int count) carries";
      fail(m.key.src, reason);
      throw CommError(CommErrorKind::invalid_argument, m.key.src, to_string(m.op), m.label, {dst}, m.key.src,
                      "a message of " + std::to_string(m.payload.size()) + " bytes to rank " +
                          std::to_string(dst) + " is more than one MPI message (int count) carries");
    }
    std::vector<std::byte> buf;
    buf.reserve(total);
    append(buf, &h, sizeof h);
    append(buf, m.label.data(), m.label.size());
    append(buf, m.payload.data(), m.payload.size());
    isend(p, kDataTag, std::move(buf));
  }

  Mailbox& mailbox(int rank) override { return *mailboxes_[idx(rank - first_)]; }
  const WorldFailure& failure() const override { return failure_; }
  void fail(int rank, const std::string& reason) override { fail_world(rank, reason, true); }

  // Records the failure, wakes this process's waiters and (for a failure born here) tells the others.
  void fail_world(int rank, const std::string& reason, bool tell_others) {
    if (!failure_.set(rank, reason)) return;
    for (auto& m : mailboxes_) m->wake();
    if (!tell_others) return;
    const auto r = static_cast<std::int32_t>(rank);
    std::vector<std::byte> buf;
    append(buf, &r, sizeof r);
    append(buf, reason.data(), reason.size());
    for (int p = 0; p < processes_; ++p) {
      if (p == process_) continue;
      try {
        isend(p, kAbortTag, buf);
      } catch (const CommError&) {
        // best effort: the other processes' timeouts still fire
      }
    }
  }

  void isend(int process, int tag, std::vector<std::byte> buf) {
    Pending s;
    s.buf = std::move(buf);
    check(MPI_Isend(s.buf.data(), static_cast<int>(s.buf.size()), MPI_BYTE, process, tag, comm_, &s.req),
          "MPI_Isend");
    std::lock_guard lock(pending_m_);
    pending_.push_back(std::move(s));
  }

  // Waits for `req` (driving MPI progress) until the deadline; false on timeout.
  static bool wait_request(MPI_Request& req, Clock::time_point deadline) {
    for (;;) {
      int done = 0;
      check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  // The progress thread: receive whatever arrived, retire completed sends, sleep a little when idle.
  // On stop: wait for this process's sends to complete, then for every process (MPI_Ibarrier).
  void progress_loop() {
    auto backoff = std::chrono::microseconds(0);
    MPI_Request barrier = MPI_REQUEST_NULL;
    bool barrier_posted = false;
    for (;;) {
      bool busy = false;
      try {
        busy = receive_all();
        busy = retire_sends() || busy;
        if (stop_.load(std::memory_order_acquire)) {
          if (!barrier_posted && pending_empty()) {
            check(MPI_Ibarrier(comm_, &barrier), "MPI_Ibarrier");
            barrier_posted = true;
          }
          if (barrier_posted) {
            int done = 0;
            check(MPI_Test(&barrier, &done, MPI_STATUS_IGNORE), "MPI_Test");
            if (done) {
              receive_all();  // what came in before the others' barrier, for undelivered()
              return;
            }
          }
          if (Clock::now() >= stop_deadline_) {
            shutdown_timed_out_ = true;
            return;
          }
        }
      } catch (const CommError& e) {
        fail_world(-1, std::string("MPI process ") + std::to_string(process_) + ": " + e.what(), true);
        if (stop_.load(std::memory_order_acquire)) {
          shutdown_timed_out_ = true;
          return;
        }
        busy = false;
      }
      if (busy) {
        backoff = std::chrono::microseconds(0);
      } else {
        backoff = std::min(std::chrono::microseconds(500), backoff + std::chrono::microseconds(20));
        std::this_thread::sleep_for(backoff);
      }
    }
  }

  bool receive_all() {
    bool any = false;
    for (;;) {
      int flag = 0;
      MPI_Message msg;
      MPI_Status st;
      check(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &msg, &st), "MPI_Improbe");
      if (!flag) return any;
      int count = 0;
      check(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
      std::vector<std::byte> buf(idx(count));
      // Not MPI_Mrecv: a large message from a peer that stops mid-transfer would block this
      // thread, and with it the world's shutdown, without a deadline.
      MPI_Request req = MPI_REQUEST_NULL;
      check(MPI_Imrecv(buf.data(), count, MPI_BYTE, &msg, &req), "MPI_Imrecv");
      for (int done = 0;;) {
        check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "MPI_Test");
        if (done) break;
        if (stop_.load(std::memory_order_acquire) && Clock::now() >= stop_deadline_)
          throw_transport("MpiWorld", "a message from process " + std::to_string(st.MPI_SOURCE) +
                                          " did not finish arriving before the world's shutdown deadline");
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
      any = true;
      if (st.MPI_TAG == kAbortTag) {
        std::int32_t r = -1;
        if (buf.size() >= sizeof r) std::memcpy(&r, buf.data(), sizeof r);
        const std::size_t n = buf.size() >= sizeof r ? buf.size() - sizeof r : 0;
        fail_world(r, std::string(reinterpret_cast<const char*>(buf.data()) + sizeof r, n), false);
      } else {
        deliver(buf, st.MPI_SOURCE);
      }
    }
  }

  void deliver(const std::vector<std::byte>& buf, int source) {
    WireHeader h{};
    if (buf.size() >= sizeof h) std::memcpy(&h, buf.data(), sizeof h);
    const bool ok = buf.size() >= sizeof h && h.magic == kMagic && h.dst >= first_ &&
                    h.dst < first_ + per_process_ && buf.size() == sizeof h + h.label_bytes + h.payload_bytes;
    if (!ok) {
      throw_transport("MpiWorld", "a malformed message of " + std::to_string(buf.size()) + " bytes from process " +
                                      std::to_string(source));
    }
    Message m;
    m.key = {static_cast<MessageKey::Space>(h.space), h.src, h.id, h.seq};
    m.dst = h.dst;
    m.op = static_cast<OpCode>(h.op);
    const auto* p = buf.data() + sizeof h;
    m.label.assign(reinterpret_cast<const char*>(p), h.label_bytes);
    m.payload.assign(p + h.label_bytes, p + h.label_bytes + h.payload_bytes);
    mailbox(h.dst).deliver(std::move(m));
  }

  bool retire_sends() {
    std::lock_guard lock(pending_m_);
    bool any = false;
    for (auto it = pending_.begin(); it != pending_.end();) {
      int done = 0;
      check(MPI_Test(&it->req, &done, MPI_STATUS_IGNORE), "MPI_Test");
      if (done) {
        it = pending_.erase(it);
        any = true;
      } else {
        ++it;
      }
    }
    return any;
  }

  bool pending_empty() {
    std::lock_guard lock(pending_m_);
    return pending_.empty();
  }

  struct Pending {
    MPI_Request req = MPI_REQUEST_NULL;
    std::vector<std::byte> buf;
  };

  const int ranks_;
  const CommOptions options_;
  int processes_ = 1;
  int process_ = 0;
  int per_process_ = 0;
  int first_ = 0;
  MPI_Comm comm_ = MPI_COMM_NULL;
  std::vector<int> local_;
  std::vector<std::unique_ptr<Mailbox>> mailboxes_;
  std::vector<std::unique_ptr<RankCommunicator>> comms_;
  WorldFailure failure_;
  std::mutex pending_m_;
  std::list<Pending> pending_;
  std::atomic<bool> stop_{false};
  Clock::time_point stop_deadline_{};
  bool shutdown_timed_out_ = false;  // written by the progress thread before it ends
  std::thread progress_;
};

MpiWorld::MpiWorld(int ranks, const CommOptions& options) : impl_(std::make_unique<Impl>(ranks, options)) {}

MpiWorld::~MpiWorld() = default;

int MpiWorld::processes() const { return impl_->processes_; }
int MpiWorld::process() const { return impl_->process_; }
int MpiWorld::size() const { return impl_->ranks_; }
const std::vector<int>& MpiWorld::local_ranks() const { return impl_->local_; }

Communicator& MpiWorld::comm(int rank) {
  if (rank < impl_->first_ || rank >= impl_->first_ + impl_->per_process_) {
    throw CommError(CommErrorKind::invalid_argument, -1, "MpiWorld::comm", "", {}, -1,
                    "rank " + std::to_string(rank) + " is not hosted by MPI process " +
                        std::to_string(impl_->process_) + " (it hosts " + std::to_string(impl_->first_) + ".." +
                        std::to_string(impl_->first_ + impl_->per_process_ - 1) + ")");
  }
  return *impl_->comms_[idx(rank - impl_->first_)];
}

std::string MpiWorld::describe() const {
  return "MPI, " + std::to_string(size()) + " ranks over " + std::to_string(processes()) +
         " processes; process " + std::to_string(process()) + " hosts ranks " + std::to_string(impl_->first_) +
         ".." + std::to_string(impl_->first_ + impl_->per_process_ - 1);
}

std::optional<Failure> MpiWorld::failure() const {
  if (!impl_->failure_.failed()) return std::nullopt;
  return Failure{impl_->failure_.first_rank(), impl_->failure_.reason()};
}

std::vector<std::string> MpiWorld::undelivered() {
  std::vector<std::string> out;
  for (auto& m : impl_->mailboxes_) {
    for (const Message& msg : m->drain()) out.push_back(describe_undelivered(msg));
  }
  return out;
}

}  // namespace tandem::comm
