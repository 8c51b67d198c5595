// RankRunner<B>'s definitions (rank_runner.h): included only by the files that instantiate it
// for a backend (exec/backends/cpu/cpu_rank_runner.cpp for the CPU, exec/backends/cuda/device_backend.cpp for CUDA).
#pragma once

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/ops/balance/balance.h"
#include "exec/runtime/rank_runner.h"

namespace tandem::runtime {

// Point-to-point tags outside the Program's message ids.
inline constexpr int kMirrorTag = 1 << 24;          // DualPipe's copy exchange (+ 2·stage, + 1)
inline constexpr int kCountsTag = 1 << 25;          // DualPipe's copy exchange of the expert counts
inline constexpr int kMtpGradTag = 1 << 26;         // MTP embedding gradient → the holder of stage 0
inline constexpr int kMtpTableTag = (1 << 26) + 1;  // the updated embedding table → the MTP copy

namespace rank_runner_detail {
inline bool is_weight(TaskKind k) { return k == TaskKind::attn_w || k == TaskKind::mlp_w; }
}  // namespace rank_runner_detail

template <class B>
template <class... Extra>
RankRunner<B>::RankRunner(const RunSpec& spec, int world_rank, Extra&&... extra)
    : spec_(spec), g_(world_rank), p_(spec.pipeline_rank_of(world_rank)), replica_(spec.replica_of(world_rank)),
      ctx_(spec.block_context(spec.setup, spec.member_of(spec.replica_of(world_rank)))),
      be_(spec, world_rank, ctx_, std::forward<Extra>(extra)...) {
  const auto& tasks = spec_.program.tasks[idx(p_)];
  for (int s : spec_.program.rank_stages[idx(p_)]) {
    HeldStage<B> st;
    st.stage = s;
    for (const Task& t : tasks)
      if (t.chunk.valid() && t.chunk.stage == s) {
        st.path = t.chunk.path;
        break;
      }
    const Stage& part = spec_.partition.stages[idx(s)];
    for (size_t b = part.first_block; b < part.end_block; ++b)
      st.params.push_back(make_block_params(spec_.setup, spec_.workload.blocks[b], ctx_.member));
    stages_.push_back(std::move(st));
  }
  for (HeldStage<B>& st : stages_) {
    link_shared_head(st.params);
    be_.add_stage(st);
  }
  // The micro-batch order of every weight pass, and how many weight passes each block awaits.
  for (const Task& t : tasks) {
    if (!rank_runner_detail::is_weight(t.kind)) continue;
    weight_queues_[{t.chunk.stage, t.block, static_cast<int>(t.kind)}].order.push_back(t.chunk.micro_batch);
  }
  for (auto& [k, q] : weight_queues_) std::sort(q.order.begin(), q.order.end());
}

template <class B>
void RankRunner<B>::begin_step(int step) {
  step_ = step;
  be_.start_step();  // first: a GPU backend makes its device current before last step's state is freed
  std::lock_guard lock(m_);
  chunks_.clear();
  losses_.clear();
  mtp_losses_.clear();
  balance_losses_.clear();
  for (auto& [k, q] : weight_queues_) {
    q.next = 0;
    q.waiting.clear();
  }
  weights_left_.clear();
  for (const Task& t : spec_.program.tasks[idx(p_)])
    if (rank_runner_detail::is_weight(t.kind)) ++weights_left_[{t.chunk.path, t.chunk.micro_batch, t.chunk.stage, t.block}];
  for (HeldStage<B>& st : stages_) {
    be_.begin_step(st);
    st.routed.assign(st.params.size(), {});
    for (size_t b = 0; b < st.params.size(); ++b)
      if (st.params[b].moe) st.routed[b].assign(idx(spec_.setup.card.n_routed_experts), 0);
  }
  expert_load_.clear();
}

template <class B>
HeldStage<B>& RankRunner<B>::held(int stage) {
  for (HeldStage<B>& st : stages_)
    if (st.stage == stage) return st;
  throw std::logic_error("stage " + std::to_string(stage) + " is not held by this rank");
}

template <class B>
typename RankRunner<B>::ChunkState& RankRunner<B>::chunk(const Chunk& c) {
  std::lock_guard lock(m_);
  auto [it, fresh] = chunks_.try_emplace({c.path, c.micro_batch, c.stage});
  if (fresh) {
    const Stage& part = spec_.partition.stages[idx(c.stage)];
    it->second.blocks.resize(part.end_block - part.first_block);
  }
  return it->second;
}

template <class B>
typename RankRunner<B>::ChunkState* RankRunner<B>::find_chunk(int path, int mb, int stage) {
  std::lock_guard lock(m_);
  auto it = chunks_.find({path, mb, stage});
  return it == chunks_.end() ? nullptr : &it->second;
}

template <class B>
const typename B::Batch& RankRunner<B>::data(int mb) {
  std::lock_guard lock(m_);
  auto it = data_.find(mb);
  if (it == data_.end()) it = data_.emplace(mb, be_.make_batch(synthetic_batch(spec_, replica_, mb))).first;
  return it->second;
}

// The stage's input: received by a pp_recv, or handed over inside the rank (DualPipeV's turn).
template <class B>
const typename B::Tensor& RankRunner<B>::stage_input(const Chunk& c) {
  ChunkState& cs = chunk(c);
  if (!B::empty(cs.input)) return cs.input;
  ChunkState* prev = find_chunk(c.path, c.micro_batch, c.stage - 1);
  if (!prev || B::empty(prev->blocks.back().out))
    throw std::logic_error("no input for micro-batch " + std::to_string(c.micro_batch) + " stage " + std::to_string(c.stage));
  return prev->blocks.back().out;
}

template <class B>
const typename B::Tensor& RankRunner<B>::stage_grad(const Chunk& c) {
  ChunkState& cs = chunk(c);
  if (!B::empty(cs.d_output)) return cs.d_output;
  ChunkState* next = find_chunk(c.path, c.micro_batch, c.stage + 1);
  if (!next || B::empty(next->blocks.front().dx))
    throw std::logic_error("no gradient for micro-batch " + std::to_string(c.micro_batch) + " stage " + std::to_string(c.stage));
  return next->blocks.front().dx;
}

template <class B>
void RankRunner<B>::run(int task_index, const Task& t) {
  // The backend's view of the task (a GPU's stream ordering and timing), until it returns or throws.
  [[maybe_unused]] const auto scope = be_.task_scope(task_index, t);
  switch (t.kind) {
    case TaskKind::pp_send: {
      const Message& m = spec_.program.schedule.messages[idx(t.message)];
      ChunkState& cs = chunk(m.chunk);
      be_.send(spec_.world_rank(t.peer, replica_), m.id, m.gradient ? cs.blocks.front().dx : cs.blocks.back().out,
               describe_task(t));
      break;
    }
    case TaskKind::pp_recv: {
      const Message& m = spec_.program.schedule.messages[idx(t.message)];
      Tensor x = be_.recv(spec_.world_rank(t.peer, replica_), m.id, spec_.tokens_per_mb(), spec_.setup.card.hidden_size,
                          describe_task(t));
      ChunkState& cs = chunk(t.chunk);
      (m.gradient ? cs.d_output : cs.input) = std::move(x);
      break;
    }
    case TaskKind::dp_reduce_scatter:
      end_of_step_balance();
      fold_mtp_grads();
      for (HeldStage<B>& st : stages_) be_.reduce(st, mirror_of(st), kMirrorTag + 2 * st.stage);
      break;
    case TaskKind::optimizer:
      for (HeldStage<B>& st : stages_) be_.optimize(st, step_);
      break;
    case TaskKind::dp_all_gather:
      for (HeldStage<B>& st : stages_) be_.gather(st);
      refresh_mtp_embeddings();
      break;
    case TaskKind::attn_w:
    case TaskKind::mlp_w: weight_task(t); break;
    case TaskKind::attn_f:
    case TaskKind::attn_b:
    case TaskKind::dispatch_f:
    case TaskKind::dispatch_b:
    case TaskKind::mlp_f:
    case TaskKind::mlp_b:
    case TaskKind::combine_f:
    case TaskKind::combine_b:
    case TaskKind::loss: compute_task(t); break;
  }
}

template <class B>
void RankRunner<B>::compute_task(const Task& t) {
  const Chunk& c = t.chunk;
  HeldStage<B>& st = held(c.stage);
  const Stage& part = spec_.partition.stages[idx(c.stage)];
  const size_t i = idx(t.block) - part.first_block;
  ChunkState& cs = chunk(c);
  State& bs = cs.blocks[i];
  const BlockParams& bp = st.params[i];
  const std::string label = describe_task(t);
  const bool first = i == 0, last = i + 1 == cs.blocks.size();

  // A block's input and output gradient are taken when its first forward / backward task runs.
  // The MTP module takes h = the head block's input (the block before it); its attn_f turns x into
  // the projection's output. Its d_out comes from its own loss task; the head's from the MTP's dx.
  const bool starts_forward = t.kind == TaskKind::attn_f || (t.kind == TaskKind::mlp_f && bp.kind == BlockKind::head);
  if (starts_forward && bp.kind == BlockKind::mtp) {
    if (i == 0 || st.params[i - 1].kind != BlockKind::head) throw std::logic_error("the MTP block does not follow the head");
    bs.x = i == 1 ? stage_input(c) : cs.blocks[i - 2].out;
  } else if (starts_forward && bp.kind != BlockKind::embedding && B::empty(bs.x)) {
    bs.x = first ? stage_input(c) : cs.blocks[i - 1].out;
  }
  const bool backward = t.kind == TaskKind::combine_b || t.kind == TaskKind::mlp_b || t.kind == TaskKind::attn_b;
  if (backward && bp.kind == BlockKind::head && !last && st.params[i + 1].kind == BlockKind::mtp)
    bs.d_out = cs.blocks[i + 1].dx;
  else if (backward && bp.kind != BlockKind::head && bp.kind != BlockKind::mtp && B::empty(bs.d_out))
    bs.d_out = last ? stage_grad(c) : cs.blocks[i + 1].dx;

  switch (t.kind) {
    case TaskKind::attn_f:
      be_.attn_f(st, i, bs, data(c.micro_batch));
      if (bp.moe) {
        std::lock_guard lock(m_);
        be_.add_expert_counts(bs, st.routed[i]);
        if (ctx_.balance_alpha > 0) balance_losses_[{c.micro_batch, t.block}] = bs.balance_loss;
      }
      break;
    case TaskKind::dispatch_f: be_.dispatch_f(st, i, bs, label); break;
    case TaskKind::mlp_f: be_.mlp_f(st, i, bs); break;
    case TaskKind::combine_f: be_.combine_f(st, i, bs, label); break;
    case TaskKind::loss: {
      be_.loss_f(st, i, bs, data(c.micro_batch));
      std::lock_guard lock(m_);
      if (bp.kind == BlockKind::mtp) mtp_losses_[c.micro_batch] += bs.loss;
      else losses_[c.micro_batch] = bs.loss;
      break;
    }
    case TaskKind::combine_b: be_.combine_b(st, i, bs, label); break;
    case TaskKind::mlp_b: be_.mlp_b(st, i, bs); break;
    case TaskKind::dispatch_b: be_.dispatch_b(st, i, bs, label); break;
    case TaskKind::attn_b: be_.attn_b(st, i, bs); break;
    case TaskKind::attn_w:
    case TaskKind::mlp_w:
    case TaskKind::pp_send:
    case TaskKind::pp_recv:
    case TaskKind::dp_reduce_scatter:
    case TaskKind::dp_all_gather:
    case TaskKind::optimizer: throw std::logic_error(std::string("unexpected task ") + to_string(t.kind));
  }
}

// Runs the weight pass now if it is its (stage, block, pass)'s next micro-batch, else parks it;
// then runs every parked one whose turn has come.
template <class B>
void RankRunner<B>::weight_task(const Task& t) {
  WeightQueue& q = weight_queues_.at({t.chunk.stage, t.block, static_cast<int>(t.kind)});
  q.waiting.emplace(t.chunk.micro_batch, t);
  while (q.next < q.order.size()) {
    auto it = q.waiting.find(q.order[q.next]);
    if (it == q.waiting.end()) return;
    const Task w = it->second;
    q.waiting.erase(it);
    ++q.next;
    HeldStage<B>& st = held(w.chunk.stage);
    const Stage& part = spec_.partition.stages[idx(w.chunk.stage)];
    const size_t i = idx(w.block) - part.first_block;
    ChunkState& cs = chunk(w.chunk);
    State& bs = cs.blocks[i];
    if (w.kind == TaskKind::mlp_w) be_.mlp_w(st, i, bs);
    else be_.attn_w(st, i, bs, data(w.chunk.micro_batch));
    std::lock_guard lock(m_);
    if (--weights_left_[{w.chunk.path, w.chunk.micro_batch, w.chunk.stage, w.block}] == 0) be_.release(st, bs);
  }
}

template <class B>
int RankRunner<B>::mirror_of(const HeldStage<B>& st) const {
  if (spec_.program.schedule.paths != 2) return -1;
  return spec_.world_rank(spec_.program.schedule.rank_of(1 - st.path, st.stage), replica_);
}

// Aux-loss-free balancing: the step's expert counts of every MoE block summed over the holders of
// its stage (the DualPipe copy, then the DP group: integer sums, exact in any order), max/mean
// load recorded, bias_e += γ · sign(mean − c_e) on every holder alike. Runs when every forward of
// the step on this rank is done (the reduce task follows all of the rank's compute). Host data:
// the counts travel through the backend's host communicator.
template <class B>
void RankRunner<B>::end_of_step_balance() {
  comm::Communicator& comm = be_.host_comm();
  const std::vector<int> dp_group = spec_.dp_group(g_);
  for (HeldStage<B>& st : stages_) {
    std::vector<int64_t> counts;
    for (const auto& r : st.routed) counts.insert(counts.end(), r.begin(), r.end());
    if (counts.empty()) continue;
    if (const int other = mirror_of(st); other >= 0) {
      const std::string label = "dualpipe copy exchange of expert counts stage " + std::to_string(st.stage);
      comm.send(other, kCountsTag + st.stage, counts.data(), counts.size() * sizeof(int64_t), label);
      std::vector<int64_t> theirs(counts.size());
      comm.recv(other, kCountsTag + st.stage, theirs.data(), theirs.size() * sizeof(int64_t), label);
      for (size_t k = 0; k < counts.size(); ++k) counts[k] += theirs[k];
    }
    std::vector<int64_t> all(counts.size() * dp_group.size());
    comm.all_gather(dp_group, counts.data(), counts.size() * sizeof(int64_t), all.data(),
                    "expert counts stage " + std::to_string(st.stage));
    std::fill(counts.begin(), counts.end(), 0);
    for (size_t m = 0; m < dp_group.size(); ++m)
      for (size_t k = 0; k < counts.size(); ++k) counts[k] += all[m * counts.size() + k];
    size_t k = 0;
    for (size_t b = 0; b < st.params.size(); ++b) {
      if (!st.params[b].moe) continue;
      std::vector<int64_t>& c = st.routed[b];
      std::copy(counts.begin() + static_cast<long>(k), counts.begin() + static_cast<long>(k + c.size()), c.begin());
      k += c.size();
      expert_load_[st.params[b].layer] = moe::load_stats(c).max_over_mean;
      if (spec_.bias_update_speed > 0) {
        moe::update_bias<float>(st.params[b].moe->bias, c, spec_.bias_update_speed);
        be_.bias_changed(st, b);
      }
    }
  }
}

template <class B>
bool RankRunner<B>::rank_holds(int pipeline_rank, int stage) const {
  const auto& held_here = spec_.program.rank_stages[idx(pipeline_rank)];
  return std::find(held_here.begin(), held_here.end(), stage) != held_here.end();
}

// MTP's shared-tensor gradients, before any stage is reduced: lm_head into the head's on the
// same stage; the embedding's into stage 0's of this replica — here when this rank holds stage 0,
// else sent to the stage-0 holder of the MTP stage's path (which adds it to its own, path by path).
// reference.cpp folds the same (replica, path) accumulators the same way.
template <class B>
void RankRunner<B>::fold_mtp_grads() {
  if (spec_.setup.card.num_nextn_predict_layers == 0) return;
  const int last_stage = static_cast<int>(spec_.partition.stages.size()) - 1;
  for (HeldStage<B>& st : stages_) {
    for (size_t b = 0; b < st.params.size(); ++b) {
      if (st.params[b].kind != BlockKind::mtp) continue;
      for (size_t h = 0; h < st.params.size(); ++h)
        if (st.params[h].kind == BlockKind::head) be_.add_mtp_lm_head_grad(st, b, h);
      if (rank_holds(p_, 0)) {
        be_.add_mtp_embed_grad(st, b, held(0));
      } else {
        const int to = spec_.world_rank(spec_.program.schedule.rank_of(st.path, 0), replica_);
        be_.send_mtp_embed_grad(to, kMtpGradTag, st, b, "mtp embedding gradient to stage 0");
      }
    }
  }
  if (!rank_holds(p_, 0)) return;
  HeldStage<B>& s0 = held(0);
  for (int path = 0; path < spec_.program.schedule.paths; ++path) {
    if (spec_.program.schedule.rank_of(path, 0) != p_) continue;
    const int from = spec_.program.schedule.rank_of(path, last_stage);
    if (rank_holds(from, 0)) continue;  // that rank added its own
    be_.recv_add_embed_grad(spec_.world_rank(from, replica_), kMtpGradTag, s0,
                            "mtp embedding gradient from the last stage");
  }
}

// After the all-gather: every MTP copy of the embedding = stage 0's updated table.
template <class B>
void RankRunner<B>::refresh_mtp_embeddings() {
  if (spec_.setup.card.num_nextn_predict_layers == 0) return;
  const int last_stage = static_cast<int>(spec_.partition.stages.size()) - 1;
  if (rank_holds(p_, 0)) {
    for (int path = 0; path < spec_.program.schedule.paths; ++path) {
      if (spec_.program.schedule.rank_of(path, 0) != p_) continue;
      const int to = spec_.program.schedule.rank_of(path, last_stage);
      if (rank_holds(to, 0)) continue;
      be_.send_embed_table(spec_.world_rank(to, replica_), kMtpTableTag, held(0), "embedding table to the mtp copy");
    }
  }
  for (HeldStage<B>& st : stages_)
    for (size_t b = 0; b < st.params.size(); ++b) {
      if (st.params[b].kind != BlockKind::mtp) continue;
      if (rank_holds(p_, 0)) {
        be_.copy_embed_table(held(0), st, b);
      } else {
        const int from = spec_.world_rank(spec_.program.schedule.rank_of(st.path, 0), replica_);
        be_.recv_embed_table(from, kMtpTableTag, st, b, "embedding table from stage 0");
      }
    }
}

}  // namespace tandem::runtime
