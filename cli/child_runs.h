// Child runs: `tandem simulate` invocations in their own processes (SimGrid allows one engine per
// process), up to `jobs` at a time — the machinery of `tandem sweep` and `tandem plan`.
//
// Results come back in the order of the commands, whatever `jobs` is and however many processes
// share the work (cli/process_group.h: under an MPI launch, command i runs on process i % K and
// every process receives every result), so a search or a sweep gives the same table with -j 1,
// -j 8 or mpirun -n 4.
//
// Interrupts: within an InterruptScope, SIGINT or SIGTERM stops the running children (each runs
// in its own process group, so a shell pipeline inside it stops too) and run_children, or the
// caller's next check_interrupted(), throws Interrupted once they are gone; the caller leaves its
// partial output marked incomplete and exits 128 + signal.
#pragma once

#include <chrono>
#include <csignal>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace tandem {

struct ChildRun {
  int code = -1;    // exit status (-1: did not exit normally)
  std::string out;  // stdout
  std::string err;  // stderr, without the "tandem: error: " prefix and trailing blank lines
};

struct Interrupted : std::exception {
  explicit Interrupted(int sig) : signal(sig) {}
  int signal;
  std::string detail = "interrupted";  // callers add what was kept ("...: rows so far in X.incomplete")
  const char* what() const noexcept override { return detail.c_str(); }
};

// While alive, SIGINT and SIGTERM stop the children and mark the command interrupted — unless the
// signal was ignored when the scope began (a non-interactive shell's background job), which
// stays so. One per command.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// Throws Interrupted if a signal came within the scope.
void check_interrupted();

// `done(i, run)` is called (one call at a time, in completion order) as this process's command i
// finishes: for progress lines and output that grows as results come in.
using ChildDone = std::function<void(size_t i, const ChildRun& run)>;
std::vector<ChildRun> run_children(const std::vector<std::string>& commands, int jobs, const ChildDone& done = {});

std::string shell_quote(const std::string& s);

// The key a rejected run's one-line error names ("FILE: KEY: REASON", where FILE may carry a
// bracketed "[with --set ...]" that holds ": " itself); "" when it names none.
std::string rejected_key(const std::string& message);

// "[=====     ] 12/40  ETA 1m05s  label" on a terminal's stderr (process 0 of a group only);
// nothing in a redirected log.
class Progress {
 public:
  explicit Progress(size_t total);
  void add_total(size_t more) { total_ += more; }
  void step(const std::string& label);  // one more done
  void skip(size_t n);                  // n the work will not need (pruned)
  void reach(size_t done);              // done so far, counted elsewhere (other processes)
  void finish();

 private:
  void draw(const std::string& label);
  size_t total_, done_ = 0;
  bool shown_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace tandem
