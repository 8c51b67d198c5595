// Child runs: `tandem simulate` invocations in their own processes (SimGrid allows one engine per
// process), up to `jobs` at a time — the machinery of `tandem sweep` and `tandem plan`.
//
// Results come back in the order of the commands, whatever `jobs` is, so a search or a sweep
// gives the same table with -j 1 and -j 8. Progress (a count and an ETA) goes to stderr only
// when stderr is a terminal: a redirected log gets none.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace tandem {

struct ChildRun {
  int code = -1;    // exit status (-1: did not exit normally)
  std::string out;  // stdout
  std::string err;  // stderr, without the "tandem: error: " prefix and trailing blank lines
};

// `label(i)` names command i in the progress line.
std::vector<ChildRun> run_children(const std::vector<std::string>& commands, int jobs,
                                   const std::function<std::string(size_t)>& label);

std::string shell_quote(const std::string& s);

// "[=====     ] 12/40  ETA 1m05s  label" on a terminal's stderr; nothing otherwise.
void progress_line(size_t done, size_t total, double elapsed_s, const std::string& label);

}  // namespace tandem
