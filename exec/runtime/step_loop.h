// The executor's step loop, shared by the backends (exec/backends/cpu/cpu_executor.cpp,
// exec/backends/cuda/cuda_executor.cpp): per step every local rank runs its Program on its own thread (the
// interpreter's two more under it), then the losses, balance losses, MTP losses and expert loads
// are gathered over the world through the host communicators and summed in (replica,
// micro-batch) order, so every backend reports a step the same way. A rank that fails aborts its
// communicator (its peers wake with an error naming it) and the loop throws ExecFailure naming
// the first failure's rank and task.
#pragma once

#include <algorithm>
#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/signed_index.h"
#include "exec/comm/world.h"
#include "exec/runtime/executor.h"
#include "exec/runtime/interpreter.h"
#include "exec/runtime/reference.h"
#include "scenarios/task_work.h"

namespace tandem::runtime {

// "rank G: ..." (the interpreter's and the communicator's messages use world ranks) →
// "world rank G (pipeline rank P, replica R): ...", so a person can find the rank in the Program.
std::string name_world_rank(const std::string& msg, const RunSpec& spec);

// What differs between backends inside the loop (each may be empty).
template <class Runner>
struct StepHooks {
  // Step 1 with check_reference: the rank's largest relative gradient error against the reference.
  std::function<double(Runner&, const ReferenceStep&)> grad_error;
  // The rank's task timings for the trace, given the interpreter's host clock times (a GPU
  // backend waits for its device and returns the device's). Called after every step, in the
  // rank's thread, before the losses are gathered: the step's wall time includes it.
  std::function<std::vector<TaskTiming>(Runner&, std::vector<TaskTiming>)> timings;
  // On the calling thread before the ranks start step `step` (a GPU backend's time origin).
  std::function<void(int step)> before_step;
};

// Runs o.steps steps of `runners` (the ranks this process hosts) in `world`, appending each
// step's stats (and step 1's trace when o.trace) to result. ref: the reference step when checking.
template <class Runner>
void run_steps(const RunSpec& spec, const ExecOptions& o, std::vector<std::unique_ptr<Runner>>& runners,
               comm::World& world, const std::optional<ReferenceStep>& ref, const StepHooks<Runner>& hooks,
               ExecResult& result) {
  std::vector<int> all(idx(spec.world_size()));
  for (int k = 0; k < spec.world_size(); ++k) all[idx(k)] = k;
  const size_t M = idx(spec.dp) * idx(spec.micro_batches);
  std::vector<int64_t> moe_layers;
  for (const Block& b : spec.workload.blocks)
    if (b.kind == BlockKind::moe_layer || (b.kind == BlockKind::mtp && spec.setup.card.is_moe_layer(b.layer)))
      moe_layers.push_back(b.layer);

  for (int step = 1; step <= o.steps; ++step) {
    if (hooks.before_step) hooks.before_step(step);
    const auto t0 = std::chrono::steady_clock::now();
    std::mutex m;
    std::string first_error;
    bool failed = false;
    std::vector<std::vector<double>> gathered(runners.size());
    std::vector<double> errs(runners.size(), 0.0);
    std::vector<std::vector<TaskTiming>> timings(runners.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < runners.size(); ++i) {
      threads.emplace_back([&, i] {
        Runner& r = *runners[i];
        comm::Communicator& c = world.comm(r.world_rank());
        try {
          r.begin_step(step);
          timings[i] = run_rank_program(r.world_rank(), spec.program.tasks[idx(r.pipeline_rank())], r, t0,
                                        [&](const std::string& why) { c.abort(why); });
          if (hooks.timings) timings[i] = hooks.timings(r, std::move(timings[i]));
          // Losses: [replica · micro-batches] per rank, zero where the rank has none; summed later.
          std::vector<double> mine(M, 0.0);
          for (const auto& [mb, loss] : r.losses()) mine[idx(r.replica()) * idx(spec.micro_batches) + idx(mb)] = loss;
          double err = 0, loss_differs = 0;
          if (ref && step == 1) {
            if (hooks.grad_error) err = hooks.grad_error(r, *ref);
            for (const auto& [mb, loss] : r.losses())
              if (loss != ref->loss[idx(r.replica())][idx(mb)]) loss_differs = 1;
            for (const auto& [mb, loss] : r.mtp_losses())
              if (loss != ref->mtp_loss[idx(r.replica())][idx(mb)]) loss_differs = 1;
          }
          mine.push_back(err);
          mine.push_back(loss_differs);
          // Expert load per MoE layer: every holder of a layer reports the same value, others 0.
          for (int64_t layer : moe_layers) {
            auto it = r.expert_load().find(layer);
            mine.push_back(it == r.expert_load().end() ? 0.0 : it->second);
          }
          // Balance loss: [replica · micro-batches] per rank, Σ over the rank's MoE blocks in block order.
          std::vector<double> bal(M, 0.0);
          for (const auto& [key, value] : r.balance_losses())
            bal[idx(r.replica()) * idx(spec.micro_batches) + idx(key.first)] += value;
          mine.insert(mine.end(), bal.begin(), bal.end());
          // MTP loss: [replica · micro-batches] per rank, as the losses.
          std::vector<double> mtp(M, 0.0);
          for (const auto& [mb, loss] : r.mtp_losses())
            mtp[idx(r.replica()) * idx(spec.micro_batches) + idx(mb)] = loss;
          mine.insert(mine.end(), mtp.begin(), mtp.end());
          std::vector<double> world_values(mine.size() * all.size());
          c.all_gather(all, mine.data(), mine.size() * sizeof(double), world_values.data(), "gather losses");
          gathered[i] = std::move(world_values);
        } catch (const std::exception& e) {
          c.abort(e.what());
          std::lock_guard lock(m);
          // The failing rank's own error names the task; peers report "rank X failed first".
          const bool own = dynamic_cast<const RankFailure*>(&e) != nullptr &&
                           std::string(e.what()).find("failed first") == std::string::npos;
          if (!failed || (own && first_error.find("failed first") != std::string::npos)) first_error = e.what();
          failed = true;
        }
      });
    }
    for (auto& t : threads) t.join();
    if (failed) {
      std::string why = first_error;
      if (auto f = world.failure(); f && why.find("failed first") != std::string::npos) why = f->reason;
      throw ExecFailure(name_world_rank(why, spec));
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Every rank gathered the same values; sum the losses in (replica, micro-batch) order.
    const auto& v = gathered.front();
    StepStats s;
    double worst = 0, differs = 0;
    const size_t stride = M + 2 + moe_layers.size() + M + M;
    for (size_t k = 0; k < M; ++k)
      for (size_t rank = 0; rank < all.size(); ++rank) s.loss += v[rank * stride + k];
    for (size_t k = 0; k < M; ++k)
      for (size_t rank = 0; rank < all.size(); ++rank) s.balance_loss += v[rank * stride + M + 2 + moe_layers.size() + k];
    for (size_t k = 0; k < M; ++k)
      for (size_t rank = 0; rank < all.size(); ++rank) s.mtp_loss += v[rank * stride + M + 2 + moe_layers.size() + M + k];
    s.moe_layers = moe_layers;
    s.load_max_over_mean.assign(moe_layers.size(), 0.0);
    for (size_t rank = 0; rank < all.size(); ++rank) {
      worst = std::max(worst, v[rank * stride + M]);
      differs = std::max(differs, v[rank * stride + M + 1]);
      for (size_t l = 0; l < moe_layers.size(); ++l)
        s.load_max_over_mean[l] = std::max(s.load_max_over_mean[l], v[rank * stride + M + 2 + l]);
    }
    // Every holder of a layer summed the same integer counts: their loads (and so their bias
    // updates) must agree exactly; a mismatch is a bug in the count exchange.
    for (size_t rank = 0; rank < all.size(); ++rank)
      for (size_t l = 0; l < moe_layers.size(); ++l) {
        const double x = v[rank * stride + M + 2 + l];
        if (x != 0 && x != s.load_max_over_mean[l])
          throw ExecFailure("step " + std::to_string(step) + ": world rank " + std::to_string(rank) +
                            " counted a different expert load for layer " + std::to_string(moe_layers[l]) +
                            " than another holder of the layer");
      }
    s.wall_s = wall;
    s.tokens_per_s = spec.scenario.tokens_per_step() / wall;
    result.steps.push_back(s);
    if (ref && step == 1) {
      result.losses_match = differs == 0;
      result.max_grad_rel_err = worst;
    }
    if (o.trace && step == 1) {
      // A receive counts from when its matching send started, as the simulator counts it from
      // when its transfer starts: waiting for the producer is pipeline bubble, not communication.
      // Sends of ranks in other processes are not known here; their receives keep their own start.
      std::map<std::pair<int, int>, double> send_start;  // (replica, message) -> start
      for (size_t i = 0; i < runners.size(); ++i) {
        const auto& tasks = spec.program.tasks[idx(runners[i]->pipeline_rank())];
        for (const TaskTiming& tt : timings[i]) {
          const Task& t = tasks[idx(tt.task)];
          if (t.kind == TaskKind::pp_send) send_start[{spec.replica_of(runners[i]->world_rank()), t.message}] = tt.start;
        }
      }
      for (size_t i = 0; i < runners.size(); ++i) {
        const auto& tasks = spec.program.tasks[idx(runners[i]->pipeline_rank())];
        for (const TaskTiming& tt : timings[i]) {
          const Task& t = tasks[idx(tt.task)];
          TraceEvent e;
          e.gpu = runners[i]->world_rank();
          e.rank = runners[i]->pipeline_rank();
          e.stream = to_string(t.stream);
          e.kind = to_string(t.kind);
          e.block = t.block;
          e.micro_batch = t.chunk.micro_batch;
          e.stage = t.chunk.stage;
          e.slot = t.slot;
          e.start = tt.start;
          e.end = tt.end;
          if (t.kind == TaskKind::pp_recv) {
            const auto send = send_start.find({spec.replica_of(e.gpu), t.message});
            if (send != send_start.end()) e.start = std::min(e.end, std::max(e.start, send->second));
          }
          const TaskWork work = task_work(spec.scenario, spec.workload, spec.program, e.rank, t);
          e.flops = work.trace_flops();
          e.bytes = work.trace_bytes(t.stream);
          result.trace.events.push_back(e);
        }
      }
    }
  }
}

}  // namespace tandem::runtime
