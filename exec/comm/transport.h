// Transport: how a world moves messages between its ranks (internal to comm/).
//
// RankCommunicator implements every Communicator operation on top of these few calls, so the
// in-process world and the MPI world share one set of algorithms and one matching rule; they differ
// only in how a message reaches the destination rank's Mailbox.
#pragma once

#include <string>

#include "exec/comm/mailbox.h"
#include "exec/comm/message.h"
#include "exec/comm/world_failure.h"

namespace tandem::comm {

class Transport {
 public:
  virtual ~Transport() = default;

  virtual int size() const = 0;
  // Eager: takes the message (payload included) and returns; it lands in the Mailbox of m.dst,
  // in this process or another.
  virtual void post(Message m) = 0;
  // The Mailbox of a rank hosted by this process.
  virtual Mailbox& mailbox(int rank) = 0;
  virtual const WorldFailure& failure() const = 0;
  // Records the world's first failure (later ones are ignored), wakes every waiter of this process
  // and tells the other processes.
  virtual void fail(int rank, const std::string& reason) = 0;
};

}  // namespace tandem::comm
