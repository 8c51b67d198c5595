#include "exec/comm/comm_error.h"

#include <utility>

namespace tandem::comm {

const char* to_string(CommErrorKind k) {
  switch (k) {
    case CommErrorKind::timeout: return "timeout";
    case CommErrorKind::peer_failed: return "peer_failed";
    case CommErrorKind::injected_fault: return "injected_fault";
    case CommErrorKind::mismatch: return "mismatch";
    case CommErrorKind::invalid_argument: return "invalid_argument";
    case CommErrorKind::transport: return "transport";
    case CommErrorKind::aborted: return "aborted";
  }
  return "?";
}

std::string rank_list(const std::vector<int>& ranks) {
  if (ranks.empty()) return "no rank";
  std::string s = ranks.size() == 1 ? "rank " : "ranks ";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ranks[i]);
  }
  return s;
}

namespace {
// "rank 3: recv "label" detail"; a world-level error (rank < 0) reads "op: detail".
std::string format(int rank, const std::string& op, const std::string& label, const std::string& detail) {
  if (rank < 0) return op + ": " + detail;
  return "rank " + std::to_string(rank) + ": " + op + " \"" + label + "\" " + detail;
}
}  // namespace

CommError::CommError(CommErrorKind kind, int rank, std::string op, std::string label,
                     std::vector<int> peers, int first_failed, const std::string& detail)
    : std::runtime_error(format(rank, op, label, detail)),
      kind_(kind),
      rank_(rank),
      op_(std::move(op)),
      label_(std::move(label)),
      peers_(std::move(peers)),
      first_failed_(first_failed) {}

}  // namespace tandem::comm
