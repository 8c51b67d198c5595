// RankRunner<Backend>: what each task of one rank's Program does (the TaskRunner the interpreter
// calls), and the rank's state across steps — ONE orchestration for every backend. The runner
// decides which block state a task works on, where a block's input and output gradient come
// from, in which order weight passes run, how DualPipe's two copies of a stage and the MTP
// module's shared tensors are folded, and the end-of-step sequence; the Backend does the
// arithmetic on its own tensors (exec/backends/cpu/cpu_backend.h: host Eigen
// matrices; exec/backends/cuda/device_backend.h: device buffers on one GPU).
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
//
// The Backend B (a concrete class; see CpuBackend for each member's contract) provides
//   types   Tensor (activations; B::empty(t)), State (one block, one micro-batch: members x, out,
//           d_out, dx of type Tensor, loss, balance_loss), Batch (a micro-batch's token ids),
//           StageData (its per-held-stage parameters, gradients and optimizer state)
//   calls   the block sub-steps, pp send / recv of tensors, the end-of-step pieces, and
//           task_scope(index, task), an RAII object held while each task runs (stream ordering
//           and timing on a GPU).
#pragma once

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
template <class B>
struct HeldStage {
  int stage = 0;
  int path = 0;  // the path whose chunks run this stage here
  // Blocks [first_block, end_block) of the stage as built by make_block_params: the backend's
  // starting values, the blocks' kinds and the router's selection bias the balancing updates.
  std::vector<BlockParams> params;
  // Rows routed to each expert this step, per block (empty for blocks without a router): this
  // rank's micro-batches until the reduce, then the sum over every holder of the stage.
  std::vector<std::vector<int64_t>> routed;
  typename B::StageData data;
};

template <class B>
class RankRunner final : public TaskRunner {
 public:
  // The backend is built from (spec, world_rank, block context, extra...): the RankRunner owns it.
  template <class... Extra>
  RankRunner(const RunSpec& spec, int world_rank, Extra&&... extra);

  void begin_step(int step);  // zero the gradients, forget last step's micro-batches
  void run(int task_index, const Task& task) override;

  int world_rank() const { return g_; }
  int pipeline_rank() const { return p_; }
  int replica() const { return replica_; }
  B& backend() { return be_; }
  const std::map<int, double>& losses() const { return losses_; }  // micro-batch → loss (last stage)
  // micro-batch → the MTP loss (λ/D-weighted, summed over depths; last stage, MTP models only).
  const std::map<int, double>& mtp_losses() const { return mtp_losses_; }
  std::vector<HeldStage<B>>& stages() { return stages_; }
  // Sequence-wise balance loss of the step: (micro-batch, block) → its MoE block's loss (already
  // scaled to the global mean over sequences), for the MoE blocks this rank ran forward.
  const std::map<std::pair<int, int>, double>& balance_losses() const { return balance_losses_; }
  // After a step: max/mean expert load of the step per MoE layer this rank holds (layer → ratio),
  // over the tokens of every rank holding the layer (before this step's bias update).
  const std::map<int64_t, double>& expert_load() const { return expert_load_; }

 private:
  using Key = std::tuple<int, int, int>;  // path, micro-batch, stage
  using Tensor = typename B::Tensor;
  using State = typename B::State;
  struct ChunkState {
    std::vector<State> blocks;
    Tensor input, d_output;  // received from the neighbour stage
  };

  ChunkState& chunk(const Chunk& c);
  ChunkState* find_chunk(int path, int mb, int stage);
  HeldStage<B>& held(int stage);
  const typename B::Batch& data(int mb);
  const Tensor& stage_input(const Chunk& c);
  const Tensor& stage_grad(const Chunk& c);
  void compute_task(const Task& t);
  void weight_task(const Task& t);
  void fold_mtp_grads();
  void refresh_mtp_embeddings();
  bool rank_holds(int pipeline_rank, int stage) const;
  int mirror_of(const HeldStage<B>& st) const;  // the other copy's world rank (DualPipe), else -1
  void end_of_step_balance();

  const RunSpec& spec_;
  int g_, p_, replica_;
  BlockContext ctx_;
  B be_;
  std::vector<HeldStage<B>> stages_;
  int step_ = 0;

  std::mutex m_;  // guards the maps below (entries are only touched by tasks their deps order)
  std::map<Key, ChunkState> chunks_;
  std::map<int, typename B::Batch> data_;
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
