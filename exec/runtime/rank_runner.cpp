#include "exec/runtime/rank_runner.h"

#include <algorithm>
#include <stdexcept>

#include "exec/moe/balance.h"
#include "exec/runtime/zero1_shards.h"

namespace tandem::runtime {

namespace {

constexpr int kMirrorTag = 1 << 24;  // DualPipe's copy exchange; pp messages use their ids below
constexpr int kCountsTag = 1 << 25;  // DualPipe's copy exchange of the expert counts
constexpr int kMtpGradTag = 1 << 26;   // MTP embedding gradient → the holder of stage 0
constexpr int kMtpTableTag = (1 << 26) + 1;  // the updated embedding table → the MTP copy

void append(std::vector<float>& out, std::span<const float> s) { out.insert(out.end(), s.begin(), s.end()); }


size_t index_in(const std::vector<int>& group, int g) {
  return static_cast<size_t>(std::find(group.begin(), group.end(), g) - group.begin());
}

bool is_weight(TaskKind k) { return k == TaskKind::attn_w || k == TaskKind::mlp_w; }

}  // namespace

RankRunner::RankRunner(const RunSpec& spec, int world_rank, comm::Communicator& comm)
    : spec_(spec), g_(world_rank), p_(spec.pipeline_rank_of(world_rank)), replica_(spec.replica_of(world_rank)),
      comm_(comm) {
  ctx_ = spec_.block_context(spec_.setup, spec_.member_of(replica_));
  ep_group_ = spec_.ep_group(g_);
  dp_group_ = spec_.dp_group(g_);
  expert_dp_group_ = spec_.expert_dp_group(g_);

  const auto& tasks = spec_.program.tasks[static_cast<size_t>(p_)];
  for (int s : spec_.program.rank_stages[static_cast<size_t>(p_)]) {
    HeldStage st;
    st.stage = s;
    for (const Task& t : tasks)
      if (t.chunk.valid() && t.chunk.stage == s) {
        st.path = t.chunk.path;
        break;
      }
    const Stage& part = spec_.partition.stages[static_cast<size_t>(s)];
    for (size_t b = part.first_block; b < part.end_block; ++b)
      st.params.push_back(make_block_params(spec_.setup, spec_.workload.blocks[b], ctx_.member));
    stages_.push_back(std::move(st));
  }
  for (HeldStage& st : stages_) link_shared_head(st.params);
  // The micro-batch order of every weight pass, and how many weight passes each block awaits.
  for (const Task& t : tasks) {
    if (!is_weight(t.kind)) continue;
    weight_queues_[{t.chunk.stage, t.block, static_cast<int>(t.kind)}].order.push_back(t.chunk.micro_batch);
  }
  for (auto& [k, q] : weight_queues_) std::sort(q.order.begin(), q.order.end());
}

void RankRunner::begin_step(int step) {
  step_ = step;
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
  for (const Task& t : spec_.program.tasks[static_cast<size_t>(p_)])
    if (is_weight(t.kind)) ++weights_left_[{t.chunk.path, t.chunk.micro_batch, t.chunk.stage, t.block}];
  for (HeldStage& st : stages_) {
    st.grads.clear();
    for (const BlockParams& bp : st.params) st.grads.push_back(make_block_grads(spec_.setup, bp, spec_.ep));
    st.routed.assign(st.params.size(), {});
    for (size_t b = 0; b < st.params.size(); ++b)
      if (st.params[b].moe) st.routed[b].assign(static_cast<size_t>(spec_.setup.card.n_routed_experts), 0);
  }
  expert_load_.clear();
}

HeldStage& RankRunner::held(int stage) {
  for (HeldStage& st : stages_)
    if (st.stage == stage) return st;
  throw std::logic_error("stage " + std::to_string(stage) + " is not held by this rank");
}

RankRunner::ChunkState& RankRunner::chunk(const Chunk& c) {
  std::lock_guard lock(m_);
  auto [it, fresh] = chunks_.try_emplace({c.path, c.micro_batch, c.stage});
  if (fresh) {
    const Stage& part = spec_.partition.stages[static_cast<size_t>(c.stage)];
    it->second.blocks.resize(part.end_block - part.first_block);
  }
  return it->second;
}

RankRunner::ChunkState* RankRunner::find_chunk(int path, int mb, int stage) {
  std::lock_guard lock(m_);
  auto it = chunks_.find({path, mb, stage});
  return it == chunks_.end() ? nullptr : &it->second;
}

const MicroBatchData& RankRunner::data(int mb) {
  std::lock_guard lock(m_);
  auto it = data_.find(mb);
  if (it == data_.end()) it = data_.emplace(mb, synthetic_batch(spec_, replica_, mb)).first;
  return it->second;
}

// The stage's input: received by a pp_recv, or handed over inside the rank (DualPipeV's turn).
const Mat<float>& RankRunner::stage_input(const Chunk& c) {
  ChunkState& cs = chunk(c);
  if (cs.input.size() > 0) return cs.input;
  ChunkState* prev = find_chunk(c.path, c.micro_batch, c.stage - 1);
  if (!prev || prev->blocks.back().out.size() == 0)
    throw std::logic_error("no input for micro-batch " + std::to_string(c.micro_batch) + " stage " + std::to_string(c.stage));
  return prev->blocks.back().out;
}

const Mat<float>& RankRunner::stage_grad(const Chunk& c) {
  ChunkState& cs = chunk(c);
  if (cs.d_output.size() > 0) return cs.d_output;
  ChunkState* next = find_chunk(c.path, c.micro_batch, c.stage + 1);
  if (!next || next->blocks.front().dx.size() == 0)
    throw std::logic_error("no gradient for micro-batch " + std::to_string(c.micro_batch) + " stage " + std::to_string(c.stage));
  return next->blocks.front().dx;
}

std::vector<moe::Buffer> RankRunner::exchange(std::vector<moe::Buffer>& send, const std::string& label) {
  std::vector<comm::ConstBytes> out;
  for (const auto& b : send) out.push_back({b.data(), b.size()});
  std::vector<std::vector<std::byte>> recv;
  comm_.all_to_all_v(ep_group_, out, recv, label);
  return recv;
}

void RankRunner::run(int, const Task& t) {
  switch (t.kind) {
    case TaskKind::pp_send: {
      const Message& m = spec_.program.schedule.messages[static_cast<size_t>(t.message)];
      ChunkState& cs = chunk(m.chunk);
      const Mat<float>& x = m.gradient ? cs.blocks.front().dx : cs.blocks.back().out;
      comm_.send(spec_.world_rank(t.peer, replica_), m.id, x.data(), static_cast<size_t>(x.size()) * sizeof(float),
                 describe_task(t));
      return;
    }
    case TaskKind::pp_recv: {
      const Message& m = spec_.program.schedule.messages[static_cast<size_t>(t.message)];
      Mat<float> x(spec_.tokens_per_mb(), spec_.setup.card.hidden_size);
      comm_.recv(spec_.world_rank(t.peer, replica_), m.id, x.data(), static_cast<size_t>(x.size()) * sizeof(float),
                 describe_task(t));
      ChunkState& cs = chunk(t.chunk);
      (m.gradient ? cs.d_output : cs.input) = std::move(x);
      return;
    }
    case TaskKind::dp_reduce_scatter:
      end_of_step_balance();
      end_of_step_reduce();
      return;
    case TaskKind::optimizer: end_of_step_optimizer(); return;
    case TaskKind::dp_all_gather: end_of_step_gather(); return;
    case TaskKind::attn_w:
    case TaskKind::mlp_w: weight_task(t); return;
    default: compute_task(t); return;
  }
}

void RankRunner::compute_task(const Task& t) {
  const Chunk& c = t.chunk;
  HeldStage& st = held(c.stage);
  const Stage& part = spec_.partition.stages[static_cast<size_t>(c.stage)];
  const size_t i = static_cast<size_t>(t.block) - part.first_block;
  ChunkState& cs = chunk(c);
  BlockState& bs = cs.blocks[i];
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
  } else if (starts_forward && bp.kind != BlockKind::embedding && bs.x.size() == 0) {
    bs.x = first ? stage_input(c) : cs.blocks[i - 1].out;
  }
  const bool backward = t.kind == TaskKind::combine_b || t.kind == TaskKind::mlp_b || t.kind == TaskKind::attn_b;
  if (backward && bp.kind == BlockKind::head && !last && st.params[i + 1].kind == BlockKind::mtp)
    bs.d_out = cs.blocks[i + 1].dx;
  else if (backward && bp.kind != BlockKind::head && bp.kind != BlockKind::mtp && bs.d_out.size() == 0)
    bs.d_out = last ? stage_grad(c) : cs.blocks[i + 1].dx;

  switch (t.kind) {
    case TaskKind::attn_f:
      attn_f(ctx_, bp, bs, data(c.micro_batch));
      if (bp.moe) {
        std::lock_guard lock(m_);
        moe::add_expert_counts(bs.tok.router.routing, st.routed[i]);
        if (ctx_.balance_alpha > 0) balance_losses_[{c.micro_batch, t.block}] = bs.balance_loss;
      }
      break;
    case TaskKind::dispatch_f: dispatch_f(ctx_, bs, [this](auto& s, auto& l) { return exchange(s, l); }, label); break;
    case TaskKind::mlp_f: mlp_f(ctx_, bp, bs); break;
    case TaskKind::combine_f: combine_f(ctx_, bs, [this](auto& s, auto& l) { return exchange(s, l); }, label); break;
    case TaskKind::loss: {
      loss_f(ctx_, bp, bs, data(c.micro_batch));
      std::lock_guard lock(m_);
      if (bp.kind == BlockKind::mtp) mtp_losses_[c.micro_batch] += bs.loss;
      else losses_[c.micro_batch] = bs.loss;
      break;
    }
    case TaskKind::combine_b: combine_b(ctx_, bs, [this](auto& s, auto& l) { return exchange(s, l); }, label); break;
    case TaskKind::mlp_b: mlp_b(ctx_, bp, bs); break;
    case TaskKind::dispatch_b: dispatch_b(ctx_, bs, [this](auto& s, auto& l) { return exchange(s, l); }, label); break;
    case TaskKind::attn_b: attn_b(ctx_, bp, bs); break;
    default: throw std::logic_error(std::string("unexpected task ") + to_string(t.kind));
  }
}

// Runs the weight pass now if it is its (stage, block, pass)'s next micro-batch, else parks it;
// then runs every parked one whose turn has come.
void RankRunner::weight_task(const Task& t) {
  WeightQueue& q = weight_queues_.at({t.chunk.stage, t.block, static_cast<int>(t.kind)});
  q.waiting.emplace(t.chunk.micro_batch, t);
  while (q.next < q.order.size()) {
    auto it = q.waiting.find(q.order[q.next]);
    if (it == q.waiting.end()) return;
    const Task w = it->second;
    q.waiting.erase(it);
    ++q.next;
    HeldStage& st = held(w.chunk.stage);
    const Stage& part = spec_.partition.stages[static_cast<size_t>(w.chunk.stage)];
    const size_t i = static_cast<size_t>(w.block) - part.first_block;
    ChunkState& cs = chunk(w.chunk);
    BlockState& bs = cs.blocks[i];
    if (w.kind == TaskKind::mlp_w) mlp_w(ctx_, st.params[i], bs, st.grads[i]);
    else attn_w(ctx_, st.params[i], bs, st.grads[i], data(w.chunk.micro_batch));
    std::lock_guard lock(m_);
    if (--weights_left_[{w.chunk.path, w.chunk.micro_batch, w.chunk.stage, w.block}] == 0) release(bs);
  }
}

std::vector<float> RankRunner::flatten_dense(std::vector<BlockParams>& blocks) {
  std::vector<float> out;
  for (BlockParams& b : blocks) for_each_dense(b, [&](const std::string&, std::span<float> s) { append(out, s); });
  return out;
}

// Routed-expert parameters (grads = false) or gradients folded over source members in group
// order (grads = true), MoE blocks in order, local experts in order.
std::vector<float> RankRunner::flatten_experts(HeldStage& st, bool grads) {
  std::vector<float> out;
  for (size_t b = 0; b < st.params.size(); ++b) {
    BlockParams& bp = st.params[b];
    if (!bp.moe) continue;
    if (!grads) {
      for_each_expert(spec_.setup, bp.layer, bp.moe->first_expert, bp.moe->experts,
                      [&](const std::string&, std::span<float> s) { append(out, s); });
      continue;
    }
    std::vector<float> acc;
    for (auto& src : st.grads[b].experts_by_src) {
      std::vector<float> one;
      for_each_expert(spec_.setup, bp.layer, bp.moe->first_expert, src,
                      [&](const std::string&, std::span<float> s) { append(one, s); });
      if (acc.empty()) acc = std::move(one);
      else
        for (size_t k = 0; k < acc.size(); ++k) acc[k] += one[k];
    }
    append(out, acc);
  }
  return out;
}

// Aux-loss-free balancing: the step's expert counts of every MoE block summed over the holders of
// its stage (the DualPipe copy, then the DP group: integer sums, exact in any order), max/mean
// load recorded, bias_e += γ · sign(mean − c_e) on every holder alike. Runs when every forward of
// the step on this rank is done (the reduce task follows all of the rank's compute).
void RankRunner::end_of_step_balance() {
  const bool mirrored = spec_.program.schedule.paths == 2;
  for (HeldStage& st : stages_) {
    std::vector<int64_t> counts;
    for (const auto& r : st.routed) counts.insert(counts.end(), r.begin(), r.end());
    if (counts.empty()) continue;
    if (mirrored) {
      const int other = spec_.world_rank(spec_.program.schedule.rank_of(1 - st.path, st.stage), replica_);
      const std::string label = "dualpipe copy exchange of expert counts stage " + std::to_string(st.stage);
      comm_.send(other, kCountsTag + st.stage, counts.data(), counts.size() * sizeof(int64_t), label);
      std::vector<int64_t> theirs(counts.size());
      comm_.recv(other, kCountsTag + st.stage, theirs.data(), theirs.size() * sizeof(int64_t), label);
      for (size_t k = 0; k < counts.size(); ++k) counts[k] += theirs[k];
    }
    std::vector<int64_t> all(counts.size() * dp_group_.size());
    comm_.all_gather(dp_group_, counts.data(), counts.size() * sizeof(int64_t), all.data(),
                     "expert counts stage " + std::to_string(st.stage));
    std::fill(counts.begin(), counts.end(), 0);
    for (size_t m = 0; m < dp_group_.size(); ++m)
      for (size_t k = 0; k < counts.size(); ++k) counts[k] += all[m * counts.size() + k];
    size_t k = 0;
    for (size_t b = 0; b < st.params.size(); ++b) {
      if (!st.params[b].moe) continue;
      std::vector<int64_t>& c = st.routed[b];
      std::copy(counts.begin() + static_cast<long>(k), counts.begin() + static_cast<long>(k + c.size()), c.begin());
      k += c.size();
      expert_load_[st.params[b].layer] = moe::load_stats(c).max_over_mean;
      if (spec_.bias_update_speed > 0) moe::update_bias<float>(st.params[b].moe->bias, c, spec_.bias_update_speed);
    }
  }
}

bool RankRunner::rank_holds(int pipeline_rank, int stage) const {
  const auto& held_here = spec_.program.rank_stages[static_cast<size_t>(pipeline_rank)];
  return std::find(held_here.begin(), held_here.end(), stage) != held_here.end();
}

// MTP's shared-tensor gradients, before any stage is flattened: lm_head into the head's on the
// same stage; the embedding's into stage 0's of this replica — here when this rank holds stage 0,
// else sent to the stage-0 holder of the MTP stage's path (which adds it to its own, path by path).
// reference.cpp folds the same (replica, path) accumulators the same way.
void RankRunner::fold_mtp_grads() {
  if (spec_.setup.card.num_nextn_predict_layers == 0) return;
  const int last_stage = static_cast<int>(spec_.partition.stages.size()) - 1;
  for (HeldStage& st : stages_) {
    for (size_t b = 0; b < st.params.size(); ++b) {
      if (st.params[b].kind != BlockKind::mtp) continue;
      BlockGrads& mg = st.grads[b];
      for (size_t h = 0; h < st.params.size(); ++h)
        if (st.params[h].kind == BlockKind::head) st.grads[h].dense.lm_head += mg.mtp_lm_head;
      if (rank_holds(p_, 0)) {
        held(0).grads.front().dense.embed += mg.mtp_embed;
      } else {
        const int to = spec_.world_rank(spec_.program.schedule.rank_of(st.path, 0), replica_);
        comm_.send(to, kMtpGradTag, mg.mtp_embed.data(), static_cast<size_t>(mg.mtp_embed.size()) * sizeof(float),
                   "mtp embedding gradient to stage 0");
      }
    }
  }
  if (!rank_holds(p_, 0)) return;
  HeldStage& s0 = held(0);
  for (int path = 0; path < spec_.program.schedule.paths; ++path) {
    if (spec_.program.schedule.rank_of(path, 0) != p_) continue;
    const int from = spec_.program.schedule.rank_of(path, last_stage);
    if (rank_holds(from, 0)) continue;  // that rank added its own
    Mat<float> g(s0.grads.front().dense.embed.rows(), s0.grads.front().dense.embed.cols());
    comm_.recv(spec_.world_rank(from, replica_), kMtpGradTag, g.data(), static_cast<size_t>(g.size()) * sizeof(float),
               "mtp embedding gradient from the last stage");
    s0.grads.front().dense.embed += g;
  }
}

// After the all-gather: every MTP copy of the embedding = stage 0's updated table.
void RankRunner::refresh_mtp_embeddings() {
  if (spec_.setup.card.num_nextn_predict_layers == 0) return;
  const int last_stage = static_cast<int>(spec_.partition.stages.size()) - 1;
  if (rank_holds(p_, 0)) {
    const Mat<float>& table = held(0).params.front().embed;
    for (int path = 0; path < spec_.program.schedule.paths; ++path) {
      if (spec_.program.schedule.rank_of(path, 0) != p_) continue;
      const int to = spec_.program.schedule.rank_of(path, last_stage);
      if (rank_holds(to, 0)) continue;
      comm_.send(spec_.world_rank(to, replica_), kMtpTableTag, table.data(), static_cast<size_t>(table.size()) * sizeof(float),
                 "embedding table to the mtp copy");
    }
  }
  for (HeldStage& st : stages_)
    for (BlockParams& bp : st.params) {
      if (bp.kind != BlockKind::mtp) continue;
      if (rank_holds(p_, 0)) {
        bp.mtp_embed = held(0).params.front().embed;
      } else {
        const int from = spec_.world_rank(spec_.program.schedule.rank_of(st.path, 0), replica_);
        comm_.recv(from, kMtpTableTag, bp.mtp_embed.data(), static_cast<size_t>(bp.mtp_embed.size()) * sizeof(float),
                   "embedding table from stage 0");
      }
    }
}

void RankRunner::end_of_step_reduce() {
  const bool mirrored = spec_.program.schedule.paths == 2;
  fold_mtp_grads();
  for (HeldStage& st : stages_) {
    std::vector<float> dense;
    for (BlockGrads& bg : st.grads)
      for_each_dense(bg.dense, [&](const std::string&, std::span<float> s) { append(dense, s); });
    std::vector<float> experts = flatten_experts(st, true);
    if (mirrored) {
      // Both copies add path 0's sum and path 1's, in that order: identical results on both.
      const int other = spec_.world_rank(spec_.program.schedule.rank_of(1 - st.path, st.stage), replica_);
      const std::string label = "dualpipe copy exchange stage " + std::to_string(st.stage);
      comm_.send(other, kMirrorTag + 2 * st.stage, dense.data(), dense.size() * sizeof(float), label);
      comm_.send(other, kMirrorTag + 2 * st.stage + 1, experts.data(), experts.size() * sizeof(float), label);
      std::vector<float> od(dense.size()), ox(experts.size());
      comm_.recv(other, kMirrorTag + 2 * st.stage, od.data(), od.size() * sizeof(float), label);
      comm_.recv(other, kMirrorTag + 2 * st.stage + 1, ox.data(), ox.size() * sizeof(float), label);
      auto add_in_path_order = [&](std::vector<float>& mine, const std::vector<float>& theirs) {
        for (size_t k = 0; k < mine.size(); ++k) mine[k] = st.path == 0 ? mine[k] + theirs[k] : theirs[k] + mine[k];
      };
      add_in_path_order(dense, od);
      add_in_path_order(experts, ox);
    }
    st.dense_counts = zero1_shard_counts(dense.size(), dp_group_.size());
    st.dense_offset = zero1_shard_offset(st.dense_counts, index_in(dp_group_, g_));
    st.dense_shard_grad.assign(st.dense_counts[index_in(dp_group_, g_)], 0.f);
    comm_.reduce_scatter_sum(dp_group_, dense.data(), st.dense_shard_grad.data(), st.dense_counts,
                             "dp_reduce_scatter stage " + std::to_string(st.stage));
    st.expert_counts = zero1_shard_counts(experts.size(), expert_dp_group_.size());
    st.expert_offset = zero1_shard_offset(st.expert_counts, index_in(expert_dp_group_, g_));
    st.expert_shard_grad.assign(st.expert_counts[index_in(expert_dp_group_, g_)], 0.f);
    if (!experts.empty())
      comm_.reduce_scatter_sum(expert_dp_group_, experts.data(), st.expert_shard_grad.data(), st.expert_counts,
                               "dp_reduce_scatter experts stage " + std::to_string(st.stage));
  }
}

void RankRunner::end_of_step_optimizer() {
  for (HeldStage& st : stages_) {
    const std::vector<float> dense = flatten_dense(st.params);
    const std::vector<float> experts = flatten_experts(st, false);
    st.dense_shard_param.assign(dense.begin() + static_cast<long>(st.dense_offset),
                                dense.begin() + static_cast<long>(st.dense_offset + st.dense_shard_grad.size()));
    st.expert_shard_param.assign(experts.begin() + static_cast<long>(st.expert_offset),
                                 experts.begin() + static_cast<long>(st.expert_offset + st.expert_shard_grad.size()));
    if (st.dense_m.size() != st.dense_shard_param.size()) {
      st.dense_m.assign(st.dense_shard_param.size(), 0.f);
      st.dense_v.assign(st.dense_shard_param.size(), 0.f);
      st.expert_m.assign(st.expert_shard_param.size(), 0.f);
      st.expert_v.assign(st.expert_shard_param.size(), 0.f);
    }
    nn::adamw_step(st.dense_shard_param, st.dense_shard_grad, st.dense_m, st.dense_v, step_, spec_.adam);
    nn::adamw_step(st.expert_shard_param, st.expert_shard_grad, st.expert_m, st.expert_v, step_, spec_.adam);
  }
}

void RankRunner::end_of_step_gather() {
  for (HeldStage& st : stages_) {
    auto bytes = [](const std::vector<size_t>& counts) {
      std::vector<size_t> b;
      for (size_t c : counts) b.push_back(c * sizeof(float));
      return b;
    };
    size_t n = 0;
    for (size_t c : st.dense_counts) n += c;
    std::vector<float> dense(n);
    comm_.all_gather_v(dp_group_, st.dense_shard_param.data(), dense.data(), bytes(st.dense_counts),
                       "dp_all_gather stage " + std::to_string(st.stage));
    size_t k = 0;
    for (BlockParams& b : st.params)
      for_each_dense(b, [&](const std::string&, std::span<float> s) {
        std::copy(dense.begin() + static_cast<long>(k), dense.begin() + static_cast<long>(k + s.size()), s.begin());
        k += s.size();
      });
    size_t nx = 0;
    for (size_t c : st.expert_counts) nx += c;
    if (nx == 0) continue;
    std::vector<float> experts(nx);
    comm_.all_gather_v(expert_dp_group_, st.expert_shard_param.data(), experts.data(), bytes(st.expert_counts),
                       "dp_all_gather experts stage " + std::to_string(st.stage));
    k = 0;
    for (BlockParams& b : st.params)
      if (b.moe)
        for_each_expert(spec_.setup, b.layer, b.moe->first_expert, b.moe->experts, [&](const std::string&, std::span<float> s) {
          std::copy(experts.begin() + static_cast<long>(k), experts.begin() + static_cast<long>(k + s.size()), s.begin());
          k += s.size();
        });
  }
  refresh_mtp_embeddings();
}

}  // namespace tandem::runtime
