// RankRunner: what each task of one rank's Program does on the CPU backend (the TaskRunner the
// interpreter calls), and the rank's state across steps: the blocks of its stages, their gradient
// accumulators, the activations of the micro-batches in flight, the ZeRO-1 optimizer shards.
//
// Canonical gradient order (what makes every schedule bit-identical to the reference):
//  * weight passes accumulate in place, and for each (stage, block, pass) in micro-batch order: a
//    W task that comes before an earlier micro-batch's is deferred until that one ran (a W task
//    is a pure function of what its chunk saved, so running it later changes no bits);
//  * MTP (last stage): the module's lm_head gradient is added to the head's (head + MTP); its
//    embedding gradient to stage 0's embedding gradient of the same replica — on this rank when it
//    holds stage 0 (DualPipe / DualPipeV / pp 1), else sent point-to-point to the stage-0 holder of
//    its path; after the all-gather the stage-0 holder hands the updated table back to the copy;
//  * routed experts accumulate per source member (block_params.h), folded in group order at the
//    end of the step;
//  * DualPipe holds each stage on two ranks (one per path): the two copies' sums are exchanged and
//    added in path order (path 0 + path 1) by both, so both copies stay identical;
//  * then reduce_scatter_sum over the DP group (replicated parameters) or the expert-DP group
//    (routed experts), which adds in group order; AdamW on the shard; all_gather.
// reference.h computes the same sums in the same order on one thread.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "exec/comm/communicator.h"
#include "exec/runtime/interpreter.h"
#include "exec/runtime/run_spec.h"

namespace tandem::runtime {

// One stage as this rank holds it (DualPipe / DualPipeV ranks hold two).
struct HeldStage {
  int stage = 0;
  int path = 0;  // the path whose chunks run this stage here
  std::vector<BlockParams> params;  // blocks [first_block, end_block) of the stage
  std::vector<BlockGrads> grads;
  // ZeRO-1: this rank's shard of the flattened replicated ("dense") and routed-expert parameters.
  std::vector<size_t> dense_counts, expert_counts;  // per member of the DP / expert-DP group
  size_t dense_offset = 0, expert_offset = 0;       // where this rank's shard starts
  std::vector<float> dense_shard_grad, expert_shard_grad;  // the reduced gradient (for checks)
  std::vector<float> dense_m, dense_v, expert_m, expert_v;
  std::vector<float> dense_shard_param, expert_shard_param;
  // Rows routed to each expert this step, per block (empty for blocks without a router): this
  // rank's micro-batches until the reduce, then the sum over every holder of the stage.
  std::vector<std::vector<int64_t>> routed;
};

class RankRunner final : public TaskRunner {
 public:
  RankRunner(const RunSpec& spec, int world_rank, comm::Communicator& comm);

  void begin_step(int step);  // zero the gradients, forget last step's micro-batches
  void run(int task_index, const Task& task) override;

  int world_rank() const { return g_; }
  int pipeline_rank() const { return p_; }
  int replica() const { return replica_; }
  const std::map<int, double>& losses() const { return losses_; }  // micro-batch → loss (last stage)
  // micro-batch → the MTP loss (λ/D-weighted, summed over depths; last stage, MTP models only).
  const std::map<int, double>& mtp_losses() const { return mtp_losses_; }
  std::vector<HeldStage>& stages() { return stages_; }
  // Sequence-wise balance loss of the step: (micro-batch, block) → its MoE block's loss (already
  // scaled to the global mean over sequences), for the MoE blocks this rank ran forward.
  const std::map<std::pair<int, int>, double>& balance_losses() const { return balance_losses_; }
  // After a step: max/mean expert load of the step per MoE layer this rank holds (layer → ratio),
  // over the tokens of every rank holding the layer (before this step's bias update).
  const std::map<int64_t, double>& expert_load() const { return expert_load_; }

  // The flattened layout of a held stage's parameters (and gradients): dense, then experts.
  static std::vector<float> flatten_dense(std::vector<BlockParams>& blocks);
  std::vector<float> flatten_experts(HeldStage& st, bool grads);

 private:
  using Key = std::tuple<int, int, int>;  // path, micro-batch, stage
  struct ChunkState {
    std::vector<BlockState> blocks;
    Mat<float> input, d_output;  // received from the neighbour stage
  };

  ChunkState& chunk(const Chunk& c);
  ChunkState* find_chunk(int path, int mb, int stage);
  HeldStage& held(int stage);
  const MicroBatchData& data(int mb);
  const Mat<float>& stage_input(const Chunk& c);
  const Mat<float>& stage_grad(const Chunk& c);
  void compute_task(const Task& t);
  void weight_task(const Task& t);
  void end_of_step_reduce();
  void fold_mtp_grads();
  void refresh_mtp_embeddings();
  bool rank_holds(int pipeline_rank, int stage) const;
  void end_of_step_balance();
  void end_of_step_optimizer();
  void end_of_step_gather();
  std::vector<moe::Buffer> exchange(std::vector<moe::Buffer>& send, const std::string& label);

  const RunSpec& spec_;
  int g_, p_, replica_;
  comm::Communicator& comm_;
  BlockContext ctx_;
  std::vector<int> ep_group_, dp_group_, expert_dp_group_;
  std::vector<HeldStage> stages_;
  int step_ = 0;

  std::mutex m_;  // guards the maps below (entries are only touched by tasks their deps order)
  std::map<Key, ChunkState> chunks_;
  std::map<int, MicroBatchData> data_;
  std::map<int, double> losses_, mtp_losses_;
  std::map<std::pair<int, int>, double> balance_losses_;
  std::map<int64_t, double> expert_load_;
  // Weight passes in micro-batch order: per (stage, block, kind) the micro-batches expected, in
  // order, how many ran, and the ones waiting for an earlier micro-batch.
  struct WeightQueue {
    std::vector<int> order;
    size_t next = 0;
    std::map<int, Task> waiting;
  };
  std::map<std::tuple<int, int, int>, WeightQueue> weight_queues_;
  std::map<std::tuple<int, int, int, int>, int> weights_left_;  // (path, mb, stage, block) → W tasks left
};

}  // namespace tandem::runtime
