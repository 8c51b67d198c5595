// CommError: why a communication call of one rank failed, as a typed exception.
//
// Every Communicator call that cannot complete throws a CommError. It carries the rank that threw,
// the operation ("recv", "all_to_all_v", ...), the caller's label (the task, e.g. "dispatch_f
// layer 3 mb 5"), the peers involved (for a timeout: the ranks not heard from) and, when the world
// was aborted, the rank that failed first. what() is one line a person can act on, e.g.
//   rank 3: recv "pp_recv F mb 4 stage 2" timed out after 5000 ms waiting for rank 2
//   rank 0: all_to_all_v "dispatch_f layer 3 mb 5" aborted: rank 2 failed first (rank 2: send ...)
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace tandem::comm {

enum class CommErrorKind {
  timeout,           // the deadline passed before the peers' messages arrived
  peer_failed,       // another rank failed first and the world was aborted
  injected_fault,    // this rank "died" by CommOptions::fault (tests)
  mismatch,          // matched calls disagree: other operation, other size
  invalid_argument,  // bad peer, tag, group or buffer sizes
  transport,         // the transport itself failed (MPI error, unsupported thread level)
  aborted,           // this rank called Communicator::abort
};
const char* to_string(CommErrorKind k);

class CommError : public std::runtime_error {
 public:
  // `detail` is what went wrong after the "rank R: op "label" " prefix, e.g. "timed out after
  // 200 ms waiting for rank 2". first_failed: the rank that failed first (this rank unless
  // kind == peer_failed). rank < 0: an error of the world as a whole (e.g. MPI setup), printed
  // as "op: detail".
  CommError(CommErrorKind kind, int rank, std::string op, std::string label, std::vector<int> peers,
            int first_failed, const std::string& detail);

  CommErrorKind kind() const { return kind_; }
  int rank() const { return rank_; }
  const std::string& op() const { return op_; }
  const std::string& label() const { return label_; }
  const std::vector<int>& peers() const { return peers_; }
  int first_failed_rank() const { return first_failed_; }

 private:
  CommErrorKind kind_;
  int rank_;
  std::string op_;
  std::string label_;
  std::vector<int> peers_;
  int first_failed_;
};

// "rank 2" or "ranks 2, 5, 7" (empty list: "no rank").
std::string rank_list(const std::vector<int>& ranks);

}  // namespace tandem::comm
