#include "exec/backends/cpu/cpu_backend.h"

#include <algorithm>
#include <stdexcept>

#include "common/signed_index.h"
#include "exec/runtime/rank_runner.h"
#include "exec/runtime/zero1_shards.h"

namespace tandem::runtime {

namespace {

void append(std::vector<float>& out, std::span<const float> s) { out.insert(out.end(), s.begin(), s.end()); }

size_t index_in(const std::vector<int>& group, int g) {
  return idx(std::find(group.begin(), group.end(), g) - group.begin());
}

std::vector<float> flatten_dense(std::vector<BlockParams>& blocks) {
  std::vector<float> out;
  for (BlockParams& b : blocks) for_each_dense(b, [&](const std::string&, std::span<float> s) { append(out, s); });
  return out;
}

}  // namespace

CpuBackend::CpuBackend(const RunSpec& spec, int world_rank, const BlockContext& ctx, comm::Communicator& comm)
    : spec_(spec), g_(world_rank), ctx_(ctx), comm_(comm), ep_group_(spec.ep_group(world_rank)),
      dp_group_(spec.dp_group(world_rank)), expert_dp_group_(spec.expert_dp_group(world_rank)) {}

void CpuBackend::add_stage(HeldStage<CpuBackend>&) {}

void CpuBackend::begin_step(HeldStage<CpuBackend>& st) {
  st.data.grads.clear();
  for (const BlockParams& bp : st.params) st.data.grads.push_back(make_block_grads(spec_.setup, bp, spec_.ep));
}

std::vector<moe::Buffer> CpuBackend::exchange(std::vector<moe::Buffer>& send, const std::string& label) {
  std::vector<comm::ConstBytes> out;
  for (const auto& b : send) out.push_back({b.data(), b.size()});
  std::vector<std::vector<std::byte>> recv;
  comm_.all_to_all_v(ep_group_, out, recv, label);
  return recv;
}

void CpuBackend::attn_f(HeldStage<CpuBackend>& st, size_t i, State& s, const Batch& d) {
  runtime::attn_f(ctx_, st.params[i], s, d);
}
void CpuBackend::dispatch_f(HeldStage<CpuBackend>&, size_t, State& s, const std::string& label) {
  runtime::dispatch_f(ctx_, s, [this](auto& b, auto& l) { return exchange(b, l); }, label);
}
void CpuBackend::mlp_f(HeldStage<CpuBackend>& st, size_t i, State& s) { runtime::mlp_f(ctx_, st.params[i], s); }
void CpuBackend::combine_f(HeldStage<CpuBackend>&, size_t, State& s, const std::string& label) {
  runtime::combine_f(ctx_, s, [this](auto& b, auto& l) { return exchange(b, l); }, label);
}
void CpuBackend::loss_f(HeldStage<CpuBackend>& st, size_t i, State& s, const Batch& d) {
  runtime::loss_f(ctx_, st.params[i], s, d);
}
void CpuBackend::combine_b(HeldStage<CpuBackend>&, size_t, State& s, const std::string& label) {
  runtime::combine_b(ctx_, s, [this](auto& b, auto& l) { return exchange(b, l); }, label);
}
void CpuBackend::mlp_b(HeldStage<CpuBackend>& st, size_t i, State& s) { runtime::mlp_b(ctx_, st.params[i], s); }
void CpuBackend::dispatch_b(HeldStage<CpuBackend>&, size_t, State& s, const std::string& label) {
  runtime::dispatch_b(ctx_, s, [this](auto& b, auto& l) { return exchange(b, l); }, label);
}
void CpuBackend::attn_b(HeldStage<CpuBackend>& st, size_t i, State& s) { runtime::attn_b(ctx_, st.params[i], s); }
void CpuBackend::mlp_w(HeldStage<CpuBackend>& st, size_t i, State& s) {
  runtime::mlp_w(ctx_, st.params[i], s, st.data.grads[i]);
}
void CpuBackend::attn_w(HeldStage<CpuBackend>& st, size_t i, State& s, const Batch& d) {
  runtime::attn_w(ctx_, st.params[i], s, st.data.grads[i], d);
}
void CpuBackend::release(HeldStage<CpuBackend>&, State& s) { runtime::release(s); }

void CpuBackend::add_expert_counts(const State& s, std::vector<int64_t>& counts) {
  moe::add_expert_counts(s.tok.router.routing, counts);
}

void CpuBackend::send(int peer, int tag, const Tensor& x, const std::string& label) {
  comm_.send(peer, tag, x.data(), idx(x.size()) * sizeof(float), label);
}

CpuBackend::Tensor CpuBackend::recv(int peer, int tag, int64_t rows, int64_t cols, const std::string& label) {
  Tensor x(rows, cols);
  comm_.recv(peer, tag, x.data(), idx(x.size()) * sizeof(float), label);
  return x;
}

void CpuBackend::add_mtp_lm_head_grad(HeldStage<CpuBackend>& st, size_t mtp, size_t head) {
  st.data.grads[head].dense.lm_head += st.data.grads[mtp].mtp_lm_head;
}

void CpuBackend::add_mtp_embed_grad(HeldStage<CpuBackend>& st, size_t mtp, HeldStage<CpuBackend>& stage0) {
  stage0.data.grads.front().dense.embed += st.data.grads[mtp].mtp_embed;
}

void CpuBackend::send_mtp_embed_grad(int to, int tag, HeldStage<CpuBackend>& st, size_t mtp, const std::string& label) {
  const Mat<float>& g = st.data.grads[mtp].mtp_embed;
  comm_.send(to, tag, g.data(), idx(g.size()) * sizeof(float), label);
}

void CpuBackend::recv_add_embed_grad(int from, int tag, HeldStage<CpuBackend>& stage0, const std::string& label) {
  Mat<float>& embed = stage0.data.grads.front().dense.embed;
  Mat<float> g(embed.rows(), embed.cols());
  comm_.recv(from, tag, g.data(), idx(g.size()) * sizeof(float), label);
  embed += g;
}

void CpuBackend::send_embed_table(int to, int tag, HeldStage<CpuBackend>& stage0, const std::string& label) {
  const Mat<float>& table = stage0.params.front().embed;
  comm_.send(to, tag, table.data(), idx(table.size()) * sizeof(float), label);
}

void CpuBackend::copy_embed_table(HeldStage<CpuBackend>& stage0, HeldStage<CpuBackend>& st, size_t mtp) {
  st.params[mtp].mtp_embed = stage0.params.front().embed;
}

void CpuBackend::recv_embed_table(int from, int tag, HeldStage<CpuBackend>& st, size_t mtp, const std::string& label) {
  Mat<float>& table = st.params[mtp].mtp_embed;
  comm_.recv(from, tag, table.data(), idx(table.size()) * sizeof(float), label);
}

// Routed-expert parameters (grads = false) or gradients folded over source members in group
// order (grads = true), MoE blocks in order, local experts in order.
std::vector<float> CpuBackend::flatten_experts(HeldStage<CpuBackend>& st, bool grads) {
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
    for (auto& src : st.data.grads[b].experts_by_src) {
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

void CpuBackend::reduce(HeldStage<CpuBackend>& st, int mirror, int tag) {
  StageData& d = st.data;
  std::vector<float> dense;
  for (BlockGrads& bg : d.grads)
    for_each_dense(bg.dense, [&](const std::string&, std::span<float> s) { append(dense, s); });
  std::vector<float> experts = flatten_experts(st, true);
  if (mirror >= 0) {
    // Both copies add path 0's sum and path 1's, in that order: identical results on both.
    const std::string label = "dualpipe copy exchange stage " + std::to_string(st.stage);
    comm_.send(mirror, tag, dense.data(), dense.size() * sizeof(float), label);
    comm_.send(mirror, tag + 1, experts.data(), experts.size() * sizeof(float), label);
    std::vector<float> od(dense.size()), ox(experts.size());
    comm_.recv(mirror, tag, od.data(), od.size() * sizeof(float), label);
    comm_.recv(mirror, tag + 1, ox.data(), ox.size() * sizeof(float), label);
    auto add_in_path_order = [&](std::vector<float>& mine, const std::vector<float>& theirs) {
      for (size_t k = 0; k < mine.size(); ++k) mine[k] = st.path == 0 ? mine[k] + theirs[k] : theirs[k] + mine[k];
    };
    add_in_path_order(dense, od);
    add_in_path_order(experts, ox);
  }
  d.dense_counts = zero1_shard_counts(dense.size(), dp_group_.size());
  d.dense_offset = zero1_shard_offset(d.dense_counts, index_in(dp_group_, g_));
  d.dense_shard_grad.assign(d.dense_counts[index_in(dp_group_, g_)], 0.f);
  comm_.reduce_scatter_sum(dp_group_, dense.data(), d.dense_shard_grad.data(), d.dense_counts,
                           "dp_reduce_scatter stage " + std::to_string(st.stage));
  d.expert_counts = zero1_shard_counts(experts.size(), expert_dp_group_.size());
  d.expert_offset = zero1_shard_offset(d.expert_counts, index_in(expert_dp_group_, g_));
  d.expert_shard_grad.assign(d.expert_counts[index_in(expert_dp_group_, g_)], 0.f);
  if (!experts.empty())
    comm_.reduce_scatter_sum(expert_dp_group_, experts.data(), d.expert_shard_grad.data(), d.expert_counts,
                             "dp_reduce_scatter experts stage " + std::to_string(st.stage));
}

void CpuBackend::optimize(HeldStage<CpuBackend>& st, int t) {
  StageData& d = st.data;
  const std::vector<float> dense = flatten_dense(st.params);
  const std::vector<float> experts = flatten_experts(st, false);
  d.dense_shard_param.assign(dense.begin() + static_cast<long>(d.dense_offset),
                             dense.begin() + static_cast<long>(d.dense_offset + d.dense_shard_grad.size()));
  d.expert_shard_param.assign(experts.begin() + static_cast<long>(d.expert_offset),
                              experts.begin() + static_cast<long>(d.expert_offset + d.expert_shard_grad.size()));
  if (d.dense_m.size() != d.dense_shard_param.size()) {
    d.dense_m.assign(d.dense_shard_param.size(), 0.f);
    d.dense_v.assign(d.dense_shard_param.size(), 0.f);
    d.expert_m.assign(d.expert_shard_param.size(), 0.f);
    d.expert_v.assign(d.expert_shard_param.size(), 0.f);
  }
  nn::adamw_step(d.dense_shard_param, d.dense_shard_grad, d.dense_m, d.dense_v, t, spec_.adam);
  nn::adamw_step(d.expert_shard_param, d.expert_shard_grad, d.expert_m, d.expert_v, t, spec_.adam);
}

void CpuBackend::gather(HeldStage<CpuBackend>& st) {
  StageData& d = st.data;
  auto bytes = [](const std::vector<size_t>& counts) {
    std::vector<size_t> b;
    for (size_t c : counts) b.push_back(c * sizeof(float));
    return b;
  };
  size_t n = 0;
  for (size_t c : d.dense_counts) n += c;
  std::vector<float> dense(n);
  comm_.all_gather_v(dp_group_, d.dense_shard_param.data(), dense.data(), bytes(d.dense_counts),
                     "dp_all_gather stage " + std::to_string(st.stage));
  size_t k = 0;
  for (BlockParams& b : st.params)
    for_each_dense(b, [&](const std::string&, std::span<float> s) {
      std::copy(dense.begin() + static_cast<long>(k), dense.begin() + static_cast<long>(k + s.size()), s.begin());
      k += s.size();
    });
  size_t nx = 0;
  for (size_t c : d.expert_counts) nx += c;
  if (nx == 0) return;
  std::vector<float> experts(nx);
  comm_.all_gather_v(expert_dp_group_, d.expert_shard_param.data(), experts.data(), bytes(d.expert_counts),
                     "dp_all_gather experts stage " + std::to_string(st.stage));
  k = 0;
  for (BlockParams& b : st.params)
    if (b.moe)
      for_each_expert(spec_.setup, b.layer, b.moe->first_expert, b.moe->experts, [&](const std::string&, std::span<float> s) {
        std::copy(experts.begin() + static_cast<long>(k), experts.begin() + static_cast<long>(k + s.size()), s.begin());
        k += s.size();
      });
}

}  // namespace tandem::runtime
