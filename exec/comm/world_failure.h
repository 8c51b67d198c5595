// WorldFailure: the first failure of a world, as seen by this process (internal to comm/).
//
// Set once (later failures are consequences and are not recorded); read lock-free by waiters,
// which re-check it whenever their mailbox wakes them.
#pragma once

#include <atomic>
#include <mutex>
#include <string>

namespace tandem::comm {

class WorldFailure {
 public:
  // Records (rank, reason) if nothing failed before; returns true if this was the first failure.
  bool set(int rank, const std::string& reason);
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  int first_rank() const;
  std::string reason() const;

 private:
  std::atomic<bool> failed_{false};
  mutable std::mutex m_;
  int rank_ = -1;
  std::string reason_;
};

}  // namespace tandem::comm
