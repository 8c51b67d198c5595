// The step loop's one out-of-line piece (step_loop.h): failures named by world rank.
#include "exec/runtime/step_loop.h"

#include <string>

namespace tandem::runtime {

std::string name_world_rank(const std::string& msg, const RunSpec& spec) {
  if (msg.rfind("rank ", 0) != 0) return msg;
  size_t end = 5;
  while (end < msg.size() && msg[end] >= '0' && msg[end] <= '9') ++end;
  if (end == 5 || end >= msg.size() || msg[end] != ':') return msg;
  const int g = std::stoi(msg.substr(5, end - 5));
  if (g < 0 || g >= spec.world_size()) return msg;
  return "world rank " + std::to_string(g) + " (pipeline rank " + std::to_string(spec.pipeline_rank_of(g)) +
         ", replica " + std::to_string(spec.replica_of(g)) + ")" + msg.substr(end);
}

}  // namespace tandem::runtime
