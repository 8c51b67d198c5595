// DeviceBackend: the arithmetic of RankRunner<DeviceBackend> (exec/runtime/rank_runner.h) on one
// GPU — the CUDA executor's rank. Same members and meaning as exec/backends/cpu/cpu_backend.h (read
// it first); what is different:
//
// - The rank owns a compute stream and a comm stream, a cuBLAS / cuBLASLt handle pair and one
//   DeviceLinear on the compute stream, in the run's numerics, with the FP8 GEMMs' SM budget =
//   the device's SMs − the scenario's comm.sms (DeviceLinear::set_sm_count_target). Activations are
//   DeviceTensors, the blocks DeviceStageBlocks (exec/blocks/block_ops_cuda.h), ZeRO-1 DeviceZero1 (zero1.h), pp
//   messages and ZeRO-1 go through the rank's DeviceCommunicator (a virtual rank or NCCL) on the
//   comm stream; expert counts through its host communicator.
// - A task enqueues and returns; nothing waits for the device except what block_ops_cuda.h names
//   (routing ids, loss values). Its stream (Task::stream) first waits on the end events of its
//   dependencies that ran on the OTHER stream — the Program's deps, turned into device order —
//   and its start and end are CUDA events on its stream: timings() reads them after the step.
//   dispatch / combine are comm tasks whose work ends on compute (the unpack; combine_f's output):
//   a comm-stream successor (pp_send of a stage ending in a MoE layer) also waits on an event
//   recorded on compute when they end.
// - The rank's compute state (the DeviceLinear's scratch, the MoE layers' events) is one object
//   driven from two host threads (the interpreter's), so every task except pp_send / pp_recv runs
//   under the rank's device mutex. pp messages need no compute state and may block the host
//   (a recv waits for the matching send): they run outside it so the other thread keeps
//   enqueueing. A task that blocks the host while holding the mutex (dispatch / combine: the
//   all-to-all's host exchange) only waits for peers' comm threads, never for this rank's compute
//   thread, so the mutex adds no cycle.
// - End of step: DualPipe's copy exchange and the MTP folds are device sends / recvs and
//   add_inplace on the comm stream (FP32 adds are commutative, so both copies' path-0 + path-1 sums
//   are bit-identical whichever copy computes them; the path-0 copy sends first, the path-1 copy
//   receives first, since NCCL's sends wait on the GPU for the matching receive). The reduce-scatter
//   and all-gather run on the comm stream, AdamW on the optimizer task's (compute) stream, ordered
//   between them by the task deps. begin_step makes each stream wait for the
//   other (last step's all-gather lands before this step's compute reads the weights) and
//   re-quantises FP8 weights (DeviceStageBlocks::begin_step).
// - The router's selection bias: the orchestration updates the host copy (HeldStage::params) and
//   bias_changed uploads it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/comm/device_comm.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/blocks/block_ops_cuda.h"
#include "exec/backends/cuda/zero1.h"
#include "exec/runtime/interpreter.h"
#include "exec/runtime/run_spec.h"
#include "exec/spec/rank_backend.h"

namespace tandem::runtime {
template <class B>
struct HeldStage;
template <class B>
class RankRunner;
}  // namespace tandem::runtime

namespace tandem::cuda {

class DeviceBackend {
 public:
  using Tensor = DeviceTensor;
  using State = DeviceBlockState;
  using Batch = DeviceMicroBatch;
  using Held = runtime::HeldStage<DeviceBackend>;

  struct StageData {
    std::unique_ptr<DeviceStageBlocks> blocks;
    std::unique_ptr<DeviceZero1> zero1;
  };

  // comm: this rank's device communicator (comm.rank() == world_rank); it and spec outlive this.
  // Makes comm.device() current on the calling thread. Throws CudaError / std::invalid_argument.
  DeviceBackend(const runtime::RunSpec& spec, int world_rank, const runtime::BlockContext& ctx,
                DeviceCommunicator& comm);
  ~DeviceBackend();
  DeviceBackend(const DeviceBackend&) = delete;
  DeviceBackend& operator=(const DeviceBackend&) = delete;

  static bool empty(const Tensor& t) { return t.size() == 0; }
  comm::Communicator& host_comm() { return comm_.host(); }
  void add_stage(Held& st);
  void start_step();  // once per step, before begin_step of each held stage
  void begin_step(Held& st);
  Batch make_batch(const runtime::MicroBatchData& d);

  // The task's device order and timing (see the header comment), and the rank's device mutex.
  class TaskScope {
   public:
    TaskScope(DeviceBackend& be, int index, const Task& t);
    ~TaskScope();
    TaskScope(TaskScope&& o) noexcept;
    TaskScope(const TaskScope&) = delete;
    TaskScope& operator=(const TaskScope&) = delete;
    TaskScope& operator=(TaskScope&&) = delete;

   private:
    DeviceBackend* be_;
    int index_;
    cudaStream_t stream_;
    std::unique_lock<std::mutex> lock_;
  };
  TaskScope task_scope(int index, const Task& t) { return TaskScope(*this, index, t); }

  void attn_f(Held& st, std::size_t i, State& s, const Batch& d);
  void dispatch_f(Held& st, std::size_t i, State& s, const std::string& label);
  void mlp_f(Held& st, std::size_t i, State& s);
  void combine_f(Held& st, std::size_t i, State& s, const std::string& label);
  void loss_f(Held& st, std::size_t i, State& s, const Batch& d);
  void combine_b(Held& st, std::size_t i, State& s, const std::string& label);
  void mlp_b(Held& st, std::size_t i, State& s);
  void dispatch_b(Held& st, std::size_t i, State& s, const std::string& label);
  void attn_b(Held& st, std::size_t i, State& s);
  void mlp_w(Held& st, std::size_t i, State& s);
  void attn_w(Held& st, std::size_t i, State& s, const Batch& d);
  void release(Held& st, State& s);
  void add_expert_counts(const State& s, std::vector<int64_t>& counts);

  void send(int peer, int tag, const Tensor& x, const std::string& label);
  Tensor recv(int peer, int tag, int64_t rows, int64_t cols, const std::string& label);

  void bias_changed(Held& st, std::size_t b);
  void add_mtp_lm_head_grad(Held& st, std::size_t mtp, std::size_t head);
  void add_mtp_embed_grad(Held& st, std::size_t mtp, Held& stage0);
  void send_mtp_embed_grad(int to, int tag, Held& st, std::size_t mtp, const std::string& label);
  void recv_add_embed_grad(int from, int tag, Held& stage0, const std::string& label);
  void send_embed_table(int to, int tag, Held& stage0, const std::string& label);
  void copy_embed_table(Held& stage0, Held& st, std::size_t mtp);
  void recv_embed_table(int from, int tag, Held& st, std::size_t mtp, const std::string& label);

  void reduce(Held& st, int mirror, int tag);
  void optimize(Held& st, int t);
  void gather(Held& st);

  // ---- for the CUDA executor ----
  // The step's time origin: an event recorded (before the ranks start the step) on a stream of
  // the same device; begin_step makes both streams wait on it and times count from it. Null: the
  // rank records its own at begin_step.
  void set_step_origin(cudaEvent_t origin) { origin_ = origin; }
  // After the step's tasks ran: waits for the device and returns each task's device start / end
  // (seconds since the origin), in task order.
  std::vector<runtime::TaskTiming> timings();
  cudaStream_t compute_stream() const { return compute_.get(); }
  cudaStream_t comm_stream() const { return comm_stream_.get(); }
  int sm_count_target() const { return linear_->sm_count_target(); }

 private:
  cudaStream_t stream_of(const Task& t) const;
  // Make `waiter` wait for all work enqueued so far on `other`.
  void stream_wait(cudaStream_t waiter, cudaStream_t other);
  float* embed_grad(Held& stage0);

  const runtime::RunSpec& spec_;
  int g_;
  const runtime::BlockContext& ctx_;
  DeviceCommunicator& comm_;
  const std::vector<Task>& tasks_;
  Stream compute_, comm_stream_;
  std::unique_ptr<Blas> blas_;
  std::unique_ptr<LtFp8Gemm> lt_;
  std::unique_ptr<DeviceLinear> linear_;
  DeviceRankKit kit_;
  std::mutex device_mutex_;
  std::vector<cudaEvent_t> start_, end_;  // per task index, timing enabled
  std::vector<uint8_t> ran_;              // the task's events were recorded this step (a byte each: two threads write)
  // Per task: dispatch / combine only (else null), recorded on compute when the task ends, after
  // the compute-side work it enqueued; comm-stream successors wait on it (end_ is on comm).
  std::vector<cudaEvent_t> tail_;
  std::vector<uint8_t> tail_ran_;
  cudaEvent_t origin_ = nullptr, own_origin_ = nullptr, handoff_ = nullptr;
  DeviceBuffer<float> scratch_;           // received copies (DualPipe exchange, MTP embedding gradient)
};

using DeviceRankRunner = runtime::RankRunner<DeviceBackend>;

static_assert(spec::RankBackend<DeviceBackend>);

}  // namespace tandem::cuda
