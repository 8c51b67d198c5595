#include "exec/runtime/reference.h"

#include <algorithm>
#include <stdexcept>

#include "common/signed_index.h"

namespace tandem::runtime {

namespace {

void append(std::vector<float>& out, std::span<const float> s) { out.insert(out.end(), s.begin(), s.end()); }

void fold_into(std::vector<float>& acc, std::vector<float> v) {
  if (acc.empty()) {
    acc = std::move(v);
    return;
  }
  for (size_t k = 0; k < acc.size(); ++k) acc[k] += v[k];
}

std::vector<float> flat_dense(std::vector<BlockGrads>& grads) {
  std::vector<float> out;
  for (BlockGrads& g : grads) for_each_dense(g.dense, [&](const std::string&, std::span<float> s) { append(out, s); });
  return out;
}

// The experts EP member `m` owns, from the reference's all-expert accumulators.
std::vector<float> flat_experts(const RunSpec& spec, std::vector<BlockGrads>& grads, int m) {
  std::vector<float> out;
  const int per = spec.setup.card.n_routed_experts > 0 ? static_cast<int>(spec.setup.card.n_routed_experts) / spec.ep : 0;
  for (BlockGrads& g : grads) {
    if (!g.dense.moe) continue;
    std::vector<nn::FfnWeights<float>> own(g.experts_by_src[0].begin() + m * per, g.experts_by_src[0].begin() + (m + 1) * per);
    for_each_expert(spec.setup, g.dense.layer, m * per, own, [&](const std::string&, std::span<float> s) { append(out, s); });
  }
  return out;
}

std::vector<moe::Buffer> hand_back(std::vector<moe::Buffer>& send, const std::string&) { return send; }

}  // namespace

ReferenceStep run_reference(const RunSpec& spec) {
  ModelSetup setup = make_setup(spec.setup.card, 1, spec.setup.numerics, spec.setup.seed);
  setup.router_bias_skew = spec.setup.router_bias_skew;
  const BlockContext ctx = spec.block_context(setup, 0);
  const auto& blocks = spec.workload.blocks;
  std::vector<BlockParams> params;
  for (const Block& b : blocks) params.push_back(make_block_params(setup, b, 0));
  link_shared_head(params);
  const int stages = static_cast<int>(spec.partition.stages.size());
  const int paths = spec.program.schedule.paths, per_path = spec.micro_batches / paths;

  // acc[replica][path][block]
  std::vector<std::vector<std::vector<BlockGrads>>> acc(idx(spec.dp));
  ReferenceStep out;
  out.loss.assign(idx(spec.dp), std::vector<double>(idx(spec.micro_batches), 0.0));
  out.balance_loss = out.loss;
  out.mtp_loss = out.loss;
  for (int r = 0; r < spec.dp; ++r) {
    acc[idx(r)].resize(idx(paths));
    for (auto& per_block : acc[idx(r)])
      for (const BlockParams& p : params) per_block.push_back(make_block_grads(setup, p, 1));
    for (int mb = 0; mb < spec.micro_batches; ++mb) {
      const MicroBatchData data = synthetic_batch(spec, r, mb);
      auto& grads = acc[idx(r)][idx(mb / per_path)];
      std::vector<BlockState> st(blocks.size());
      for (size_t b = 0; b < blocks.size(); ++b) {
        BlockState& s = st[b];
        if (b > 0) s.x = blocks[b].kind == BlockKind::mtp ? st[b - 1].x : st[b - 1].out;  // MTP: the head's input
        switch (blocks[b].kind) {
          case BlockKind::embedding: attn_f(ctx, params[b], s, data); break;
          case BlockKind::head:
            mlp_f(ctx, params[b], s);
            loss_f(ctx, params[b], s, data);
            out.loss[idx(r)][idx(mb)] = s.loss;
            break;
          case BlockKind::mtp:
            attn_f(ctx, params[b], s, data);
            if (params[b].moe) {
              out.balance_loss[idx(r)][idx(mb)] += s.balance_loss;
              dispatch_f(ctx, s, hand_back, "");
            }
            mlp_f(ctx, params[b], s);
            if (params[b].moe) combine_f(ctx, s, hand_back, "");
            loss_f(ctx, params[b], s, data);
            out.mtp_loss[idx(r)][idx(mb)] += s.loss;
            break;
          case BlockKind::dense_layer:
          case BlockKind::moe_layer:
            attn_f(ctx, params[b], s, data);
            if (params[b].moe) {
              out.balance_loss[idx(r)][idx(mb)] += s.balance_loss;
              dispatch_f(ctx, s, hand_back, "");
            }
            mlp_f(ctx, params[b], s);
            if (params[b].moe) combine_f(ctx, s, hand_back, "");
        }
      }
      for (size_t b = blocks.size(); b-- > 0;) {
        BlockState& s = st[b];
        // The head takes the MTP module's dx; the MTP module's d_out comes from its loss.
        if (b + 1 < blocks.size() && blocks[b].kind != BlockKind::mtp) s.d_out = st[b + 1].dx;
        switch (blocks[b].kind) {
          case BlockKind::embedding:
            attn_w(ctx, params[b], s, grads[b], data);
            break;
          case BlockKind::head:
            mlp_b(ctx, params[b], s);
            mlp_w(ctx, params[b], s, grads[b]);
            break;
          case BlockKind::dense_layer:
          case BlockKind::moe_layer:
          case BlockKind::mtp:
            if (params[b].moe) combine_b(ctx, s, hand_back, "");
            mlp_b(ctx, params[b], s);
            mlp_w(ctx, params[b], s, grads[b]);
            if (params[b].moe) dispatch_b(ctx, s, hand_back, "");
            attn_b(ctx, params[b], s);
            attn_w(ctx, params[b], s, grads[b], data);
        }
        if (b + 1 < blocks.size()) st[b + 1] = BlockState{};
      }
    }
  }

  // MTP folds (rank_runner_impl.h fold_mtp_grads), per (replica, path): lm_head head + MTP; the
  // embedding gradient into stage 0's of the path whose stage 0 the MTP stage's rank holds (DualPipe:
  // the other path), else of its own path.
  const auto& sch = spec.program.schedule;
  auto rank_holds = [&](int prank, int stage) {
    const auto& h = spec.program.rank_stages[idx(prank)];
    return std::find(h.begin(), h.end(), stage) != h.end();
  };
  for (size_t b = 0; b < blocks.size(); ++b) {
    if (blocks[b].kind != BlockKind::mtp) continue;
    size_t head = 0;
    for (size_t h = 0; h < blocks.size(); ++h)
      if (blocks[h].kind == BlockKind::head) head = h;
    for (int r = 0; r < spec.dp; ++r)
      for (int path = 0; path < paths; ++path) {
        auto& mine = acc[idx(r)][idx(path)];
        mine[head].dense.lm_head += mine[b].mtp_lm_head;
        const int holder = sch.rank_of(path, stages - 1);
        int target = path;
        if (rank_holds(holder, 0))
          for (int q = 0; q < paths; ++q)
            if (sch.rank_of(q, 0) == holder) target = q;
        acc[idx(r)][idx(target)][0].dense.embed += mine[b].mtp_embed;
      }
  }

  // The canonical sums, per stage, laid out as the ranks flatten them.
  for (int s = 0; s < stages; ++s) {
    const Stage& part = spec.partition.stages[idx(s)];
    auto stage_grads = [&](int r, int path) {
      auto& all = acc[idx(r)][idx(path)];
      return std::vector<BlockGrads>(all.begin() + static_cast<long>(part.first_block),
                                     all.begin() + static_cast<long>(part.end_block));
    };
    std::vector<float> dense;
    for (int r = 0; r < spec.dp; ++r) {
      std::vector<float> per_replica;
      for (int path = 0; path < paths; ++path) {
        auto g = stage_grads(r, path);
        fold_into(per_replica, flat_dense(g));
      }
      fold_into(dense, std::move(per_replica));
    }
    out.dense.push_back(std::move(dense));
    std::vector<std::vector<float>> experts(idx(spec.ep));
    for (int m = 0; m < spec.ep; ++m)
      for (int group = 0; group < spec.dp / spec.ep; ++group) {
        std::vector<float> per_group;
        for (int path = 0; path < paths; ++path) {
          std::vector<float> per_path_sum;
          for (int j = 0; j < spec.ep; ++j) {
            auto g = stage_grads(group * spec.ep + j, path);
            fold_into(per_path_sum, flat_experts(spec, g, m));
          }
          fold_into(per_group, std::move(per_path_sum));
        }
        fold_into(experts[idx(m)], std::move(per_group));
      }
    out.experts.push_back(std::move(experts));
  }
  return out;
}

}  // namespace tandem::runtime
