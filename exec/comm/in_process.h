// InProcessWorld: all ranks of a job as threads of this process.
//
// Each rank has a Mailbox (mutex + condition variable); a send moves a copy of the payload into the
// destination's mailbox, a receive waits on its own. Results are deterministic: matching is by key,
// never by arrival time, and reductions add in group order. A failure wakes every waiting rank at
// once (WorldFailure + Mailbox::wake).
#pragma once

#include <memory>
#include <vector>

#include "exec/comm/world.h"

namespace tandem::comm {

class InProcessWorld final : public World {
 public:
  // size >= 1; options.timeout > 0. Throws CommError(invalid_argument) otherwise.
  InProcessWorld(int size, const CommOptions& options = {});
  ~InProcessWorld() override;

  int size() const override;
  const std::vector<int>& local_ranks() const override;
  Communicator& comm(int rank) override;
  std::string describe() const override;
  std::optional<Failure> failure() const override;
  std::vector<std::string> undelivered() override;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tandem::comm
