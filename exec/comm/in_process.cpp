#include "exec/comm/in_process.h"

#include <string>

#include "common/signed_index.h"
#include "exec/comm/rank_communicator.h"
#include "exec/comm/transport.h"

namespace tandem::comm {

class InProcessWorld::Impl final : public Transport {
 public:
  Impl(int size, const CommOptions& options) : mailboxes_(idx(size)) {
    for (int r = 0; r < size; ++r) {
      ranks_.push_back(r);
      comms_.push_back(std::make_unique<RankCommunicator>(*this, r, options));
    }
  }

  int size() const override { return static_cast<int>(mailboxes_.size()); }
  void post(Message m) override {
    const int dst = m.dst;
    mailboxes_[idx(dst)].deliver(std::move(m));
  }
  Mailbox& mailbox(int rank) override { return mailboxes_[idx(rank)]; }
  const WorldFailure& failure() const override { return failure_; }
  void fail(int rank, const std::string& reason) override {
    if (!failure_.set(rank, reason)) return;
    for (Mailbox& m : mailboxes_) m.wake();
  }

  std::vector<Mailbox> mailboxes_;
  WorldFailure failure_;
  std::vector<int> ranks_;
  std::vector<std::unique_ptr<RankCommunicator>> comms_;
};

namespace {
void check_world(int size, const CommOptions& options) {
  if (size < 1) {
    throw CommError(CommErrorKind::invalid_argument, -1, "InProcessWorld", "", {}, -1,
                    "a world needs at least one rank, not " + std::to_string(size));
  }
  if (options.timeout.count() <= 0) {
    throw CommError(CommErrorKind::invalid_argument, -1, "InProcessWorld", "", {}, -1,
                    "the timeout must be positive, not " + std::to_string(options.timeout.count()) + " ms");
  }
}
}  // namespace

InProcessWorld::InProcessWorld(int size, const CommOptions& options) {
  check_world(size, options);
  impl_ = std::make_unique<Impl>(size, options);
}

InProcessWorld::~InProcessWorld() = default;

int InProcessWorld::size() const { return impl_->size(); }

const std::vector<int>& InProcessWorld::local_ranks() const { return impl_->ranks_; }

Communicator& InProcessWorld::comm(int rank) {
  if (rank < 0 || rank >= size()) {
    throw CommError(CommErrorKind::invalid_argument, -1, "InProcessWorld::comm", "", {}, -1,
                    "rank " + std::to_string(rank) + " is not a rank of this world of " + std::to_string(size()));
  }
  return *impl_->comms_[idx(rank)];
}

std::string InProcessWorld::describe() const { return "in-process, " + std::to_string(size()) + " ranks"; }

std::optional<Failure> InProcessWorld::failure() const {
  if (!impl_->failure_.failed()) return std::nullopt;
  return Failure{impl_->failure_.first_rank(), impl_->failure_.reason()};
}

std::vector<std::string> InProcessWorld::undelivered() {
  std::vector<std::string> out;
  for (Mailbox& m : impl_->mailboxes_) {
    for (const Message& msg : m.drain()) out.push_back(describe_undelivered(msg));
  }
  return out;
}

}  // namespace tandem::comm
