#include "exec/comm/mailbox.h"

#include <utility>

namespace tandem::comm {

void Mailbox::deliver(Message m) {
  {
    std::lock_guard lock(m_);
    const MessageKey key = m.key;
    queues_[key].push_back(std::move(m));
  }
  cv_.notify_all();  // several threads of one rank may wait on different keys
}

Mailbox::Status Mailbox::take_all(std::span<const MessageKey> keys, std::span<std::optional<Message>> slots,
                                  Clock::time_point deadline, const WorldFailure& failure) {
  std::unique_lock lock(m_);
  for (;;) {
    bool all = true;
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (slots[i]) continue;
      auto it = queues_.find(keys[i]);
      if (it == queues_.end()) {
        all = false;
        continue;
      }
      slots[i] = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) queues_.erase(it);
    }
    if (all) return Status::complete;
    if (failure.failed()) return Status::failed;
    if (Clock::now() >= deadline) return Status::timeout;
    cv_.wait_until(lock, deadline);  // then look again: a message that came with the deadline counts
  }
}

void Mailbox::wake() {
  { std::lock_guard lock(m_); }
  cv_.notify_all();
}

std::vector<Message> Mailbox::drain() {
  std::lock_guard lock(m_);
  std::vector<Message> out;
  for (auto& [key, q] : queues_) {
    for (Message& m : q) out.push_back(std::move(m));
  }
  queues_.clear();
  return out;
}

}  // namespace tandem::comm
