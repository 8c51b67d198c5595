#include "exec/comm/world_failure.h"

namespace tandem::comm {

bool WorldFailure::set(int rank, const std::string& reason) {
  std::lock_guard lock(m_);
  if (failed_.load(std::memory_order_relaxed)) return false;
  rank_ = rank;
  reason_ = reason;
  failed_.store(true, std::memory_order_release);
  return true;
}

int WorldFailure::first_rank() const {
  std::lock_guard lock(m_);
  return rank_;
}

std::string WorldFailure::reason() const {
  std::lock_guard lock(m_);
  return reason_;
}

}  // namespace tandem::comm
