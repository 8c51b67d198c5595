// The interpreter runs each stream in list order and every task after its deps; a throwing task
// stops the rank with an error naming it.
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <catch2/catch.hpp>

#include "exec/runtime/interpreter.h"

using namespace tandem;
using namespace tandem::runtime;

namespace {

Task task(TaskKind k, std::vector<int> deps) {
  Task t;
  t.kind = k;
  t.stream = (k == TaskKind::pp_send || k == TaskKind::pp_recv || k == TaskKind::dispatch_f) ? Stream::comm : Stream::compute;
  t.deps = std::move(deps);
  return t;
}

class Recorder final : public TaskRunner {
 public:
  int throw_at = -1;
  std::mutex m;
  std::vector<int> order;
  void run(int i, const Task&) override {
    // Slow comm tasks: a compute task that ignored its deps would overtake them.
    if (i == 1) std::this_thread::sleep_for(std::chrono::milliseconds(30));
    if (i == throw_at) throw std::runtime_error("boom");
    std::lock_guard lock(m);
    order.push_back(i);
  }
  int pos(int i) {
    for (size_t k = 0; k < order.size(); ++k)
      if (order[k] == i) return static_cast<int>(k);
    return -1;
  }
};

}  // namespace

TEST_CASE("interpreter honours deps and stream order", "[runtime]") {
  // 0 compute; 1 comm (slow) after 0; 2 compute, independent; 3 compute after 1; 4 comm after 3.
  const std::vector<Task> tasks{task(TaskKind::attn_f, {}), task(TaskKind::dispatch_f, {0}),
                                task(TaskKind::attn_f, {}), task(TaskKind::mlp_f, {1}),
                                task(TaskKind::pp_send, {3})};
  Recorder r;
  const auto timings = run_rank_program(0, tasks, r, std::chrono::steady_clock::now(), nullptr);
  REQUIRE(r.order.size() == 5);
  CHECK(r.pos(0) < r.pos(1));
  CHECK(r.pos(0) < r.pos(2));  // compute stream in list order
  CHECK(r.pos(2) < r.pos(3));
  CHECK(r.pos(1) < r.pos(3));  // dep across streams
  CHECK(r.pos(3) < r.pos(4));
  for (const auto& t : timings) CHECK(t.end >= t.start);
}

TEST_CASE("interpreter stops a failing rank and names the task", "[runtime]") {
  const std::vector<Task> tasks{task(TaskKind::attn_f, {}), task(TaskKind::dispatch_f, {0}),
                                task(TaskKind::mlp_f, {1}), task(TaskKind::pp_send, {2})};
  Recorder r;
  r.throw_at = 2;
  std::atomic<int> aborted{0};
  try {
    run_rank_program(5, tasks, r, std::chrono::steady_clock::now(), [&](const std::string&) { ++aborted; });
    FAIL("no error");
  } catch (const RankFailure& e) {
    CHECK(e.rank() == 5);
    CHECK(e.task() == 2);
    CHECK(std::string(e.what()).find("rank 5") != std::string::npos);
    CHECK(std::string(e.what()).find("mlp_f") != std::string::npos);
  }
  CHECK(aborted == 1);
  CHECK(r.pos(3) == -1);  // never ran
}
