// Mailbox: the messages waiting for one rank, and the waiting (internal to comm/).
//
// Any thread delivers; the rank's own threads take. Messages under one key form a FIFO. A taker
// waits on a condition variable until every message it wants has arrived, its deadline passes, or
// the world fails (WorldFailure is re-checked on every wake-up; wake() is how a failure reaches
// a waiter, and it takes the mailbox lock so no wake-up is lost).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "exec/comm/message.h"
#include "exec/comm/world_failure.h"

namespace tandem::comm {

using Clock = std::chrono::steady_clock;

class Mailbox {
 public:
  void deliver(Message m);

  enum class Status { complete, timeout, failed };
  // For every i with an empty slots[i], takes the oldest message under keys[i]. Returns complete
  // when all slots are filled, else timeout at `deadline` or failed once `failure` is set (the
  // slots filled so far stay filled, telling the caller which peers were missing).
  Status take_all(std::span<const MessageKey> keys, std::span<std::optional<Message>> slots,
                  Clock::time_point deadline, const WorldFailure& failure);

  void wake();

  // Removes and returns every message never taken (oldest first per key).
  std::vector<Message> drain();

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::map<MessageKey, std::deque<Message>> queues_;
};

}  // namespace tandem::comm
