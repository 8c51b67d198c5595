// CpuBackend: the arithmetic of RankRunner<CpuBackend> (rank_runner.h) on the host — activations
// are Eigen FP32 matrices, the block sub-steps are block_ops.h's, messages go through the rank's
// comm::Communicator, and ZeRO-1 flattens the stage's parameters and gradients into host vectors.
//
// This header is also the contract every backend's members follow (same names, same meaning);
// exec/spec/rank_backend.h states their shapes as a concept each backend asserts.
// Calls come from the rank's compute and comm threads; RankRunner orders the calls that touch the
// same state (task deps), so a backend needs no lock of its own for the CPU's arithmetic.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "exec/comm/communicator.h"
#include "exec/blocks/block_ops.h"
#include "exec/runtime/interpreter.h"
#include "exec/runtime/run_spec.h"
#include "exec/spec/rank_backend.h"

namespace tandem::runtime {

template <class B>
struct HeldStage;
template <class B>
class RankRunner;

class CpuBackend {
 public:
  using Tensor = Mat<float>;
  using State = BlockState;
  using Batch = MicroBatchData;

  // One held stage's gradients and ZeRO-1 state.
  struct StageData {
    std::vector<BlockGrads> grads;
    // This rank's shard of the flattened replicated ("dense") and routed-expert parameters.
    std::vector<size_t> dense_counts, expert_counts;  // per member of the DP / expert-DP group
    size_t dense_offset = 0, expert_offset = 0;       // where this rank's shard starts
    std::vector<float> dense_shard_grad, expert_shard_grad;  // the reduced gradient (for checks)
    std::vector<float> dense_m, dense_v, expert_m, expert_v;
    std::vector<float> dense_shard_param, expert_shard_param;
  };

  CpuBackend(const RunSpec& spec, int world_rank, const BlockContext& ctx, comm::Communicator& comm);

  static bool empty(const Tensor& t) { return t.size() == 0; }
  comm::Communicator& host_comm() { return comm_; }  // host data: expert counts
  void add_stage(HeldStage<CpuBackend>& st);         // once per held stage, after its blocks are built
  void start_step() {}                               // once per step, before begin_step of each stage
  void begin_step(HeldStage<CpuBackend>& st);        // zero the stage's gradient accumulators
  Batch make_batch(MicroBatchData d) { return d; }   // the token ids as the sub-steps read them
  // Held while a task runs (RAII: also when it throws); a GPU backend orders its streams and
  // times the task here. Nothing to do on the CPU.
  struct TaskScope {};
  TaskScope task_scope(int, const Task&) { return {}; }

  // The block sub-steps (block_ops.h) of block i of the stage.
  void attn_f(HeldStage<CpuBackend>& st, size_t i, State& s, const Batch& d);
  void dispatch_f(HeldStage<CpuBackend>& st, size_t i, State& s, const std::string& label);
  void mlp_f(HeldStage<CpuBackend>& st, size_t i, State& s);
  void combine_f(HeldStage<CpuBackend>& st, size_t i, State& s, const std::string& label);
  void loss_f(HeldStage<CpuBackend>& st, size_t i, State& s, const Batch& d);
  void combine_b(HeldStage<CpuBackend>& st, size_t i, State& s, const std::string& label);
  void mlp_b(HeldStage<CpuBackend>& st, size_t i, State& s);
  void dispatch_b(HeldStage<CpuBackend>& st, size_t i, State& s, const std::string& label);
  void attn_b(HeldStage<CpuBackend>& st, size_t i, State& s);
  void mlp_w(HeldStage<CpuBackend>& st, size_t i, State& s);
  void attn_w(HeldStage<CpuBackend>& st, size_t i, State& s, const Batch& d);
  void release(HeldStage<CpuBackend>& st, State& s);
  // After attn_f of a MoE block: counts[e] += rows this micro-batch routed to expert e.
  void add_expert_counts(const State& s, std::vector<int64_t>& counts);

  // Pipeline messages: an activation or gradient [rows, cols] to / from a world rank.
  void send(int peer, int tag, const Tensor& x, const std::string& label);
  Tensor recv(int peer, int tag, int64_t rows, int64_t cols, const std::string& label);

  // The balancing update changed st.params[b].moe->bias (the host copy is the CPU's own).
  void bias_changed(HeldStage<CpuBackend>&, size_t) {}
  // MTP's shared tensors: the module's (block mtp) lm_head contribution into the head block's
  // gradient; its embedding contribution into stage 0's, here or sent / received; the updated
  // table from stage 0 into the module's copy, here or sent / received.
  void add_mtp_lm_head_grad(HeldStage<CpuBackend>& st, size_t mtp, size_t head);
  void add_mtp_embed_grad(HeldStage<CpuBackend>& st, size_t mtp, HeldStage<CpuBackend>& stage0);
  void send_mtp_embed_grad(int to, int tag, HeldStage<CpuBackend>& st, size_t mtp, const std::string& label);
  void recv_add_embed_grad(int from, int tag, HeldStage<CpuBackend>& stage0, const std::string& label);
  void send_embed_table(int to, int tag, HeldStage<CpuBackend>& stage0, const std::string& label);
  void copy_embed_table(HeldStage<CpuBackend>& stage0, HeldStage<CpuBackend>& st, size_t mtp);
  void recv_embed_table(int from, int tag, HeldStage<CpuBackend>& st, size_t mtp, const std::string& label);

  // ZeRO-1 of one held stage. reduce: experts folded over source members, then (mirror >= 0,
  // DualPipe) the two copies' sums exchanged with world rank `mirror` under tags tag, tag + 1 and
  // added in path order, then reduce_scatter_sum over the DP / expert-DP group. optimize: AdamW on
  // the shard (step t from 1). gather: all_gather_v of the shards back into the parameters.
  void reduce(HeldStage<CpuBackend>& st, int mirror, int tag);
  void optimize(HeldStage<CpuBackend>& st, int t);
  void gather(HeldStage<CpuBackend>& st);

 private:
  std::vector<moe::Buffer> exchange(std::vector<moe::Buffer>& send, const std::string& label);
  std::vector<float> flatten_experts(HeldStage<CpuBackend>& st, bool grads);

  const RunSpec& spec_;
  int g_;
  const BlockContext& ctx_;
  comm::Communicator& comm_;
  std::vector<int> ep_group_, dp_group_, expert_dp_group_;
};

static_assert(spec::RankBackend<CpuBackend>);

using CpuRankRunner = RankRunner<CpuBackend>;

}  // namespace tandem::runtime
