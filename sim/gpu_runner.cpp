#include "sim/gpu_runner.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "common/signed_index.h"
#include "common/splitmix64.h"

namespace tandem {

namespace {

class Runner final : public GpuRunner {
 public:
  Runner(StepContext& w, EventLoop& loop, int gpu)
      : w_(w), loop_(loop), gpu_(gpu), rank_(gpu / w.dp), replica_(gpu % w.dp),
        tasks_(w.program->tasks[idx(rank_)]), time_(gpu, rank_) {}

  bool finished() const override { return left_ == 0; }
  // Where this GPU stopped, for the error when a run cannot finish.
  std::string stuck_at() const override {
    std::string out = "gpu " + std::to_string(gpu_) + " (rank " + std::to_string(rank_) + ")";
    for (size_t i = 0; i < tasks_.size(); ++i)
      if (i < done_.size() && !done_[i]) {
        out += " waits at task " + std::to_string(i) + " (" + to_string(tasks_[i].kind) + ", " +
               to_string(tasks_[i].stream) + " stream)";
        break;
      }
    return out;
  }

  void start() override {
    done_.assign(tasks_.size(), 0);
    start_.assign(tasks_.size(), 0);
    outstanding_.assign(tasks_.size(), 0);
    left_ = tasks_.size();
    advance();
  }

  void on_timer(int task, int tag) override {
    if (static_cast<Then>(tag) == Then::start_flows) start_flows(task);
    part_done(task);
  }

  void on_delivered(int task, double began) override {
    if (task < 0) return;  // a send of this GPU's that no task waits for
    // A receive counts from when its transfer started, not from when it was posted: waiting
    // for the producer is pipeline bubble, not communication.
    if (tasks_[idx(task)].kind == TaskKind::pp_recv) {
      const double posted = start_[idx(task)];
      start_[idx(task)] = std::max(posted, began);
      const int peer = tasks_[idx(task)].peer;
      if (peer >= 0) w_.waited_on_pp[idx(w_.gpu(peer, replica_))] += std::max(0.0, began - posted);
    }
    part_done(task);
  }

 private:
  // What a timer's end starts next within its task.
  enum class Then {
    nothing,
    start_flows,  // an all-to-all's kernels before its transfers (casts, notify) ended
  };

  void part_done(int task) {
    if (--outstanding_[idx(task)] != 0) return;
    finish(task);
    advance();
  }

  // Start what can start; a task with nothing to wait for ends at once and may free the next.
  void advance() {
    while (launch(Stream::compute, next_compute_, compute_running_) || launch(Stream::comm, next_comm_, comm_running_)) {
    }
  }

  bool ready(const Task& t) const {
    for (int d : t.deps)
      if (!done_[idx(d)]) return false;
    return true;
  }

  // Starts the stream's next task if the stream is free and the task's dependencies are done.
  bool launch(Stream stream, size_t& next, int& running) {
    if (running >= 0) return false;
    while (next < tasks_.size() && tasks_[next].stream != stream) ++next;
    if (next >= tasks_.size() || !ready(tasks_[next])) return false;
    const int i = static_cast<int>(next++);
    running = i;
    start_[idx(i)] = loop_.now();
    if (stream == Stream::compute) {
      const auto r = idx(rank_), ti = idx(i);
      double secs = w_.compute_seconds[r][ti];
      if ((w_.skewed || w_.noise > 0) && tasks_[ti].block >= 0 && w_.routed_seconds[r][ti] != 0) {
        // This GPU's experts get load_factor times the balanced rows of the layer (skewed), and
        // this micro-batch's draw on top (noise).
        const Block& b = w_.workload->blocks[idx(tasks_[ti].block)];
        double factor = w_.skewed && !b.routing.rows_per_token.empty() ? b.routing.load_factor(replica_ % w_.ep) : 1.0;
        if (w_.noise > 0) factor *= micro_batch_noise(b.layer, tasks_[ti].chunk.micro_batch);
        secs += (factor - 1.0) * w_.routed_seconds[r][ti];
      }
      delay(secs / w_.speed(gpu_), i);
    } else {
      start_comm(i);
    }
    if (outstanding_[idx(i)] == 0) finish(i);
    return true;
  }

  // 1 + noise z, z ~ N(0, 1) from (seed, layer, micro-batch, GPU): a hash, not a stream, so the
  // draw does not depend on the order tasks run in. Kept above 5% of the share.
  double micro_batch_noise(int64_t layer, int micro_batch) const {
    const uint64_t h = splitmix64(splitmix64(splitmix64(w_.seed ^ 0x6E6F697365ULL) ^ static_cast<uint64_t>(layer)) ^ static_cast<uint64_t>(micro_batch)) ^
                       static_cast<uint64_t>(gpu_);
    const uint64_t a = splitmix64(h), b = splitmix64(a);
    const double u1 = (static_cast<double>(a >> 11) + 1.0) * 0x1.0p-53, u2 = static_cast<double>(b >> 11) * 0x1.0p-53;
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
    return std::max(0.05, 1.0 + w_.noise * z);
  }

  // A task's part that only takes time (a kernel, an analytic transfer).
  void delay(double seconds, int task, Then then = Then::nothing) {
    ++outstanding_[idx(task)];
    loop_.at(loop_.now() + std::max(seconds, 0.0), this, task, static_cast<int>(then));
  }
  // A task's part that is a message, either end.
  void send(uint64_t key, double bytes, int task) {
    ++outstanding_[idx(task)];
    loop_.send(key, gpu_, bytes, this, task);
  }
  void receive(uint64_t key, int task) {
    ++outstanding_[idx(task)];
    loop_.receive(key, gpu_, this, task);
  }

  // grouped tier: the EP group's members meet at each all-to-all; when the last one arrives,
  // everyone's end time follows from the arrival times and the analytic plan, and each member's
  // task ends then. A member is ready to transfer once its own kernels before the transfer
  // (`prefix`) are done.
  void meet(const A2AGroup& g, int task, const A2APlan& plan, double prefix, double scale) {
    const uint64_t key = (static_cast<uint64_t>(rank_) << 48) | (static_cast<uint64_t>(g.first) << 24) | static_cast<uint64_t>(task);
    auto& rv = w_.rendezvous[key];
    if (rv.arrive.empty()) rv.arrive.assign(idx(g.ep), 0.0);
    const auto member = idx(replica_ % w_.ep);
    rv.arrive[member] = loop_.now() + prefix;
    ++outstanding_[idx(task)];
    rv.waiting.push_back({this, member});
    if (static_cast<int>(rv.waiting.size()) < g.ep) return;
    const std::vector<double> end = plan.ends(rv.arrive, scale);
    // Who the group waited for: the member that arrived last, charged every other member's wait.
    const auto last = idx(std::max_element(rv.arrive.begin(), rv.arrive.end()) - rv.arrive.begin());
    double waited = 0;
    for (double a : rv.arrive) waited += rv.arrive[last] - a;
    w_.waited_on_a2a[idx(g.gpu(w_.layout, static_cast<int>(last)))] += waited;
    for (const auto& [who, m] : rv.waiting) loop_.at(end[m], who, task);
    w_.rendezvous.erase(key);
  }

  void start_comm(int i) {
    const Task& t = tasks_[idx(i)];
    const TaskWork& work = w_.work[idx(rank_)][idx(i)];
    switch (t.kind) {
      case TaskKind::pp_send:
        // Posted, not waited for: pipeline transfers are DMA-driven and the sender's stream
        // goes on (as DualPipe batches its isend/irecv); the receiver waits for the data. A send
        // that held the stream until its receive is posted could deadlock two neighbours whose
        // transfers cross.
        loop_.send(EventLoop::key(EventLoop::Channel::pipeline, replica_, t.message), gpu_, work.bytes, this, -1);
        break;
      case TaskKind::pp_recv:
        receive(EventLoop::key(EventLoop::Channel::pipeline, replica_, t.message), i);
        break;
      case TaskKind::dispatch_f:
      case TaskKind::dispatch_b:
      case TaskKind::combine_f:
      case TaskKind::combine_b: {
        if (w_.ep <= 1) break;
        const A2AGroup group(w_.layout, gpu_, work.tokens, work.bytes_per_copy, w_.workload->blocks[idx(t.block)].routing);
        const auto r = idx(rank_), ti = idx(i);
        const double prefix = w_.compute_seconds[r][ti] / w_.speed(gpu_), scale = w_.transfer_scale[r][ti];
        if (w_.options->fidelity == Fidelity::replicated) {
          const double transfer = w_.all_to_all_plan(group, i, t.block, work.bytes_per_copy).seconds[idx(replica_ % w_.ep)];
          delay(prefix + transfer * scale, i);
          break;
        }
        if (w_.options->fidelity == Fidelity::grouped) {
          meet(group, i, w_.all_to_all_plan(group, i, t.block, work.bytes_per_copy), prefix, scale);
          break;
        }
        if (prefix > 0) {
          delay(prefix, i, Then::start_flows);
        } else {
          start_flows(i);
        }
        break;
      }
      case TaskKind::dp_reduce_scatter:
      case TaskKind::dp_all_gather: {
        // Ring over the data-parallel replicas of this rank: (n-1)/n of the data to the next one.
        const int n = w_.dp;
        if (n <= 1) break;
        if (w_.options->fidelity == Fidelity::replicated) {
          delay(w_.ring_seconds(rank_, work.bytes), i);
          break;
        }
        const int next = w_.gpu(rank_, (replica_ + 1) % n), prev = w_.gpu(rank_, (replica_ + n - 1) % n);
        send(EventLoop::key(EventLoop::Channel::ring, gpu_, next), work.bytes * (n - 1) / n, i);
        receive(EventLoop::key(EventLoop::Channel::ring, prev, gpu_), i);
        break;
      }
      case TaskKind::attn_f:
      case TaskKind::attn_b:
      case TaskKind::attn_w:
      case TaskKind::mlp_f:
      case TaskKind::mlp_b:
      case TaskKind::mlp_w:
      case TaskKind::loss:
      case TaskKind::optimizer: break;  // compute tasks: nothing on the network
    }
  }

  // per_pair and aggregated tiers: this GPU sends its flows of an all-to-all task (IB legs, and
  // NVLink legs it forwards as an arrival GPU) and receives every flow addressed to it; the task
  // ends when all have completed. A flow carries its bytes over the efficiency of its leg and the
  // task's stretch, so the links' nominal rates give the measured transfer times.
  void start_flows(int i) {
    const Task& t = tasks_[idx(i)];
    const TaskWork& work = w_.work[idx(rank_)][idx(i)];
    const A2AGroup group(w_.layout, gpu_, work.tokens, work.bytes_per_copy, w_.workload->blocks[idx(t.block)].routing);
    const double scale = w_.transfer_scale[idx(rank_)][idx(i)];
    for (const A2AFlow& fl : flows_touching(w_.layout, group, gpu_, w_.options->fidelity == Fidelity::per_pair)) {
      const bool nvlink = fl.from / w_.gpn == fl.to / w_.gpn;
      const double bytes = fl.bytes * scale / (nvlink ? w_.a2a->nvlink_efficiency : w_.a2a->ib_efficiency);
      const uint64_t key = EventLoop::key(EventLoop::Channel::all_to_all, fl.from, fl.to);
      if (fl.from == gpu_) send(key, bytes, i);
      if (fl.to == gpu_) receive(key, i);
    }
  }

  void finish(int i) {
    const Task& t = tasks_[idx(i)];
    const double now = loop_.now();
    const double begin = start_[idx(i)];
    done_[idx(i)] = 1;
    if (t.stream == Stream::compute) compute_running_ = -1;
    else comm_running_ = -1;
    time_.add(t.stream == Stream::compute, to_string(t.kind), slot_class(*w_.program, rank_, t.slot), begin, now);
    const bool traced = w_.options->trace && (w_.options->trace_gpus > 0 ? gpu_ < w_.options->trace_gpus : replica_ == 0);
    if (traced) {
      const TaskWork& work = w_.work[idx(rank_)][idx(i)];
      w_.events.push_back(TraceEvent{gpu_, rank_, to_string(t.stream), to_string(t.kind), t.block,
                                     t.chunk.micro_batch, t.chunk.stage, begin, now,
                                     work.trace_flops(), work.trace_bytes(t.stream), t.slot});
    }
    if (--left_ == 0) {  // this GPU's step is done (its last sends may be delivered later)
      time_.seal();
      w_.gpu_time[idx(gpu_)] = std::move(time_);
      w_.end_time = std::max(w_.end_time, now);
      if (w_.on_gpu_done) w_.on_gpu_done(gpu_, now);
    }
  }

  StepContext& w_;
  EventLoop& loop_;
  int gpu_, rank_, replica_;
  const std::vector<Task>& tasks_;
  std::vector<char> done_;
  std::vector<double> start_;
  std::vector<int> outstanding_;  // per task: its parts not yet ended
  size_t left_ = 1;               // tasks not yet done (1 until start())
  size_t next_compute_ = 0, next_comm_ = 0;
  int compute_running_ = -1, comm_running_ = -1;
  GpuTime time_;  // where this GPU's step goes, task by task
};

}  // namespace

std::unique_ptr<GpuRunner> GpuRunner::create(StepContext& context, EventLoop& loop, int gpu) {
  return std::make_unique<Runner>(context, loop, gpu);
}

}  // namespace tandem
