#include "exec/runtime/interpreter.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "common/signed_index.h"

namespace tandem::runtime {

std::string describe_task(const Task& t) {
  std::string s = to_string(t.kind);
  if (t.chunk.valid()) {
    s += " mb " + std::to_string(t.chunk.micro_batch) + " stage " + std::to_string(t.chunk.stage);
    if (t.chunk.path != 0) s += " path " + std::to_string(t.chunk.path);
  }
  if (t.block >= 0) s += " block " + std::to_string(t.block);
  if (t.message >= 0) s += " msg " + std::to_string(t.message) + " peer " + std::to_string(t.peer);
  return s;
}

namespace {

// Shared by the two stream threads of one rank: which tasks are done, and the first failure.
class RankState {
 public:
  explicit RankState(size_t n) : done_(n, 0) {}

  // Blocks until every dep is done; false when the rank failed meanwhile.
  bool wait_for(const std::vector<int>& deps) {
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] {
      if (failed_) return true;
      for (int d : deps)
        if (!done_[idx(d)]) return false;
      return true;
    });
    return !failed_;
  }
  void finish(int task) {
    {
      std::lock_guard lock(m_);
      done_[idx(task)] = 1;
    }
    cv_.notify_all();
  }
  // Records the first failure; true for the first caller.
  bool fail(int task, const std::string& what) {
    bool first = false;
    {
      std::lock_guard lock(m_);
      if (!failed_) {
        failed_ = true;
        first = true;
        task_ = task;
        what_ = what;
      }
    }
    cv_.notify_all();
    return first;
  }
  bool failed() {
    std::lock_guard lock(m_);
    return failed_;
  }
  int failed_task() const { return task_; }
  const std::string& what() const { return what_; }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<char> done_;
  bool failed_ = false;
  int task_ = -1;
  std::string what_;
};

}  // namespace

std::vector<TaskTiming> run_rank_program(int rank, const std::vector<Task>& tasks, TaskRunner& runner,
                                         std::chrono::steady_clock::time_point origin,
                                         const std::function<void(const std::string&)>& on_failure) {
  RankState state(tasks.size());
  std::vector<TaskTiming> timings(tasks.size());
  auto seconds = [&](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(t - origin).count();
  };

  // One stream: its tasks in list order, each after its deps.
  auto stream_loop = [&](Stream stream) {
    for (size_t i = 0; i < tasks.size(); ++i) {
      const Task& t = tasks[i];
      if (t.stream != stream) continue;
      if (!state.wait_for(t.deps)) return;
      const int index = static_cast<int>(i);
      try {
        const auto start = std::chrono::steady_clock::now();
        runner.run(index, t);
        timings[i] = {index, seconds(start), seconds(std::chrono::steady_clock::now())};
      } catch (const std::exception& e) {
        const std::string what = "rank " + std::to_string(rank) + ": task " + std::to_string(i) +
                                 " (" + describe_task(t) + ") failed: " + e.what();
        if (state.fail(index, what) && on_failure) on_failure(what);
        return;
      }
      state.finish(index);
    }
  };

  std::thread comm([&] { stream_loop(Stream::comm); });
  stream_loop(Stream::compute);
  comm.join();
  if (state.failed()) throw RankFailure(rank, state.failed_task(), state.what());
  return timings;
}

}  // namespace tandem::runtime
