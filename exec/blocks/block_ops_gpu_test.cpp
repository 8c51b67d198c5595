// GPU check of the device block sub-steps (exec/blocks/block_ops_cuda.h), TANDEM_GPU_CHECK(blocks),
// against exec/runtime/block_ops (the CPU reference) on tiny-moe (models/tiny-moe.yaml: hidden 256,
// MLA with q_lora 128, dense layer 0, MoE layers with 16 routed experts top-4 in 4 groups + one
// shared expert, vocab 1024, MTP depth 1 whose layer is a MoE layer).
//
// One stage holding every block kind: embedding, layer 0 (dense), layer 1 (MoE), head, MTP (layer
// 8, MoE), EP 1 (the exchange hands the buffers straight back on the CPU; a 1-rank
// VirtualRankWorld's communicator on the device). Two micro-batches of 2 sequences x 32 tokens,
// random token ids, sequence-wise balance loss on (α = 0.003), MTP loss scale 0.3 / tokens (the
// scales over both micro-batches' tokens / sequences). The CPU runs exec/runtime/reference.cpp's
// order per micro-batch (forward: attn_f, dispatch_f, mlp_f, combine_f, loss_f; backward:
// combine_b, mlp_b, mlp_w, dispatch_b, attn_b, attn_w), accumulating both into one set of
// gradients. The device runs both forwards, then every input-gradient pass, and DEFERS every
// weight pass to the end (block by block, micro-batch order, release() after each block's weight
// passes), as the rank runner may: so the check also covers weight passes that run after the
// other micro-batch reused the shared pieces' scratch, after the next block was released (out and
// dx must survive release), and that ADD into accumulators already holding a contribution.
//
// Asserted (Numerics::exact):
//   routing    every MoE block's expert ids [tokens · top_k] EQUAL to the CPU's. The router GEMM is
//              cuBLAS FP32 vs Eigen's fixed order, so a token whose k-th and (k+1)-th biased scores
//              tie to the last bit could pick another expert; that is reported as a failure (and
//              then every downstream tensor of that layer differs), not hidden by a tolerance.
//   losses     per micro-batch: head loss, MTP loss, each MoE block's balance loss: relative error 1e-5.
//   forward    the embedding output (a copy: bit-identical), layer 0's and layer 1's outputs:
//              rel-L2 1e-5 — cuBLAS FP32 vs the CPU's order (~2^-24·sqrt(K) per GEMM), RMSNorm's tree
//              sum, CUDA's expf in SwiGLU / softmax; errors of ~1e-6 are expected.
//   backward   the input gradient of every block (dx of layer 0 = the gradient at the stage input of
//              a stage starting at layer 0, layer 1, head, MTP) and every gradient accumulator
//              downloaded by DeviceStageGrads::download (each tensor by name, routed experts
//              included) plus the MTP's embedding / lm_head contributions: rel-L2 1e-4. Same
//              sources of error as forward, compounded through the backward chain (head → MTP →
//              MoE → dense → MLA, ~15 GEMMs deep) and through the attention core's backward, for
//              which exec/ops/attention/attention_gpu_test.cpp itself needs 1e-4 in exact; measured values are
//              printed, so a drift well below the bound stays visible.
// Informational (printed, not asserted; runs must not throw and losses must be finite):
//   Numerics::fp8 (DeepSeek-V3 wires, quantised weights prepared by begin_step): the CPU and the
//   device FP8 recipes agree up to cuBLASLt's accumulation order, but that moves router inputs by
//   ~1e-4, so the routing may differ on a near-tie, which makes a tolerance meaningless.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/blocks/block_ops_cuda.h"
#include "exec/backends/cuda/comm/virtual_ranks.h"
#include "exec/blocks/block_ops.h"
#include "exec/blocks/block_params.h"
#include "models/model_card.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"
#include "tests/test_paths.h"

using tandem::idx;

namespace {

namespace cu = tandem::cuda;
namespace rt = tandem::runtime;
namespace nn = tandem::nn;
namespace moe = tandem::moe;
using tandem::BlockKind;
using tandem::ModelCard;
using tandem::gputest::expect;
using tandem::gputest::rel_l2;
using tandem::gputest::to_host;

constexpr int kSeqLen = 32, kSequences = 2, kTokens = kSeqLen * kSequences, kMicroBatches = 2;
constexpr double kBalanceAlpha = 0.003, kMtpLambda = 0.3;

ModelCard tiny_moe() {
  const auto r = tandem::load_model_card(tandem::test::repo("models/tiny-moe.yaml"));
  if (!r.ok()) throw std::runtime_error("cannot read models/tiny-moe.yaml");
  return r.value();
}

// embedding, layer 0 (dense), layer 1 (MoE), head, MTP (layer num_hidden_layers): one stage.
std::vector<rt::BlockParams> make_stage(const rt::ModelSetup& s) {
  const std::pair<BlockKind, int64_t> kinds[] = {{BlockKind::embedding, -1},
                                                 {BlockKind::dense_layer, 0},
                                                 {BlockKind::moe_layer, 1},
                                                 {BlockKind::head, -1},
                                                 {BlockKind::mtp, s.card.num_hidden_layers}};
  std::vector<rt::BlockParams> out;
  for (const auto& [kind, layer] : kinds) {
    tandem::Block b;
    b.kind = kind;
    b.layer = layer;
    out.push_back(rt::make_block_params(s, b, 0));
  }
  rt::link_shared_head(out);
  return out;
}

// Random sequences: tokens[i] = s_i, targets[i] = s_{i+1}, mtp_targets[i] = s_{i+2} (−1 at a
// sequence's last position), as runtime's synthetic batches lay them out. One stream per micro-batch.
rt::MicroBatchData make_batch(int vocab, int micro_batch) {
  std::mt19937_64 rng(20261123 + static_cast<uint64_t>(micro_batch));
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  rt::MicroBatchData d;
  for (int q = 0; q < kSequences; ++q) {
    std::vector<int32_t> s(kSeqLen + 2);
    for (int32_t& t : s) t = tok(rng);
    for (int i = 0; i < kSeqLen; ++i) {
      d.tokens.push_back(s[idx(i)]);
      d.targets.push_back(s[idx(i) + 1]);
      d.mtp_targets.push_back(i == kSeqLen - 1 ? -1 : s[idx(i) + 2]);
    }
  }
  return d;
}

rt::BlockContext make_context(const rt::ModelSetup& s) {
  rt::BlockContext c;
  c.setup = &s;
  c.member = 0;
  c.seq_len = kSeqLen;
  c.loss_scale = 1.0 / (kTokens * kMicroBatches);
  c.balance_alpha = kBalanceAlpha;
  c.balance_scale = 1.0 / (kSequences * kMicroBatches);
  c.mtp_loss_scale =
      kMtpLambda / static_cast<double>(s.card.num_nextn_predict_layers) / (kTokens * kMicroBatches);
  return c;
}

// What one micro-batch produced on one side, as host copies (indexed by block; empty where a
// block has none).
struct MicroBatchOut {
  double loss = 0, mtp_loss = 0;
  std::vector<double> balance;                  // [block]
  std::vector<std::vector<int32_t>> routing;    // [block]
  std::vector<std::vector<float>> out, dx;      // [block]
  void size(std::size_t n) {
    balance.assign(n, 0.0);
    routing.resize(n);
    out.resize(n);
    dx.resize(n);
  }
};

struct RunOut {
  std::vector<MicroBatchOut> mb;                // [micro-batch]
  std::vector<rt::BlockGrads> grads;            // [block], summed over the micro-batches
  std::vector<float> mtp_embed, mtp_lm_head;    // the MTP block's contributions
  bool released_ok = true;                      // device: release kept out / dx, dropped the rest
};

std::vector<float> flat(const nn::Mat<float>& m) { return tandem::gputest::flat(m); }

rt::Exchange hand_back() {
  return [](std::vector<moe::Buffer>& send, const std::string&) { return send; };
}

// The CPU reference: exec/runtime/reference.cpp's loop, one micro-batch after the other, the
// weight passes adding into one set of accumulators (micro-batch 0's contribution first).
RunOut run_cpu(const rt::BlockContext& ctx, std::vector<rt::BlockParams>& params,
               const std::vector<rt::MicroBatchData>& batches) {
  const std::size_t n = params.size();
  const rt::Exchange ex = hand_back();
  RunOut r;
  for (const rt::BlockParams& p : params) r.grads.push_back(rt::make_block_grads(*ctx.setup, p, 1));
  for (const rt::MicroBatchData& data : batches) {
    MicroBatchOut& o = r.mb.emplace_back();
    o.size(n);
    std::vector<rt::BlockState> st(n);
    for (std::size_t b = 0; b < n; ++b) {
      rt::BlockState& s = st[b];
      const rt::BlockParams& p = params[b];
      if (b > 0) s.x = p.kind == BlockKind::mtp ? st[b - 1].x : st[b - 1].out;
      switch (p.kind) {
        case BlockKind::embedding: rt::attn_f(ctx, p, s, data); break;
        case BlockKind::head:
          rt::mlp_f(ctx, p, s);
          rt::loss_f(ctx, p, s, data);
          o.loss = s.loss;
          break;
        case BlockKind::dense_layer:
        case BlockKind::moe_layer:
        case BlockKind::mtp:
          rt::attn_f(ctx, p, s, data);
          if (p.moe) {
            o.balance[b] = s.balance_loss;
            o.routing[b] = s.tok.router.routing.expert;
            rt::dispatch_f(ctx, s, ex, "dispatch");
          }
          rt::mlp_f(ctx, p, s);
          if (p.moe) rt::combine_f(ctx, s, ex, "combine");
          if (p.kind == BlockKind::mtp) {
            rt::loss_f(ctx, p, s, data);
            o.mtp_loss = s.loss;
          }
      }
      if (p.kind != BlockKind::head && p.kind != BlockKind::mtp) o.out[b] = flat(s.out);
    }
    for (std::size_t b = n; b-- > 0;) {
      rt::BlockState& s = st[b];
      const rt::BlockParams& p = params[b];
      if (b + 1 < n && p.kind != BlockKind::mtp) s.d_out = st[b + 1].dx;
      switch (p.kind) {
        case BlockKind::embedding: rt::attn_w(ctx, p, s, r.grads[b], data); break;
        case BlockKind::head:
          rt::mlp_b(ctx, p, s);
          rt::mlp_w(ctx, p, s, r.grads[b]);
          break;
        case BlockKind::dense_layer:
        case BlockKind::moe_layer:
        case BlockKind::mtp:
          if (p.moe) rt::combine_b(ctx, s, ex, "combine_b");
          rt::mlp_b(ctx, p, s);
          rt::mlp_w(ctx, p, s, r.grads[b]);
          if (p.moe) rt::dispatch_b(ctx, s, ex, "dispatch_b");
          rt::attn_b(ctx, p, s);
          rt::attn_w(ctx, p, s, r.grads[b], data);
      }
      if (p.kind != BlockKind::embedding) o.dx[b] = flat(s.dx);
      rt::release(s);
    }
  }
  r.mtp_embed = flat(r.grads[n - 1].mtp_embed);
  r.mtp_lm_head = flat(r.grads[n - 1].mtp_lm_head);
  return r;
}

std::vector<float> download(const cu::DeviceTensor& t) { return to_host(t.data(), idx(t.size())); }

// The same on the device, scheduled as the rank runner may: both micro-batches' forwards, then
// block by block (last first) both micro-batches' input-gradient passes, and only after ALL of
// them the weight passes, block by block in micro-batch order, each block released right after
// its weight passes. So every weight pass runs after the other micro-batch's passes on the same
// block (the shared MlaDevice / DeviceFfn / DeviceMoeLayer / DeviceHead scratch was reused in
// between: a weight pass must read its own micro-batch's state only), after the next block was
// released (its dx, this block's d_out, must survive), and into accumulators that already hold
// micro-batch 0's contribution (a weight pass that overwrote instead of adding would lose it).
RunOut run_device(const rt::BlockContext& ctx, std::vector<rt::BlockParams>& params,
                  const std::vector<rt::MicroBatchData>& batches, cu::Numerics numerics) {
  const std::size_t n = params.size(), nmb = batches.size();
  cu::VirtualRankWorld world(1);
  cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
  cu::Stream compute, comm_stream;
  cu::Blas blas(compute.get());
  cu::LtFp8Gemm lt;
  cu::DeviceLinear lin(blas, lt, numerics);
  cu::DeviceRankKit kit;
  kit.device = world.device();
  kit.compute = compute.get();
  kit.comm_stream = comm_stream.get();
  kit.blas = &blas;
  kit.lt = &lt;
  kit.linear = &lin;
  kit.comm = &world.comm(0);
  kit.ep_group = {0};

  RunOut r;
  r.mb.resize(nmb);
  for (MicroBatchOut& o : r.mb) o.size(n);
  {
    cu::DeviceStageBlocks dev(ctx, params, kit);
    expect(dev.size() == n, "blocks: size() == the stage's blocks");
    std::vector<cu::DeviceMicroBatch> db;
    for (const rt::MicroBatchData& d : batches) db.push_back(cu::upload_micro_batch(d));
    dev.begin_step();
    std::vector<std::vector<cu::DeviceBlockState>> st(nmb);
    for (std::size_t m = 0; m < nmb; ++m) {
      st[m] = std::vector<cu::DeviceBlockState>(n);
      MicroBatchOut& o = r.mb[m];
      for (std::size_t b = 0; b < n; ++b) {
        cu::DeviceBlockState& s = st[m][b];
        const rt::BlockParams& p = params[b];
        if (b > 0) s.x = p.kind == BlockKind::mtp ? st[m][b - 1].x : st[m][b - 1].out;
        switch (p.kind) {
          case BlockKind::embedding: dev.attn_f(b, s, db[m]); break;
          case BlockKind::head:
            dev.mlp_f(b, s);
            dev.loss_f(b, s, db[m]);
            o.loss = s.loss;
            break;
          case BlockKind::dense_layer:
          case BlockKind::moe_layer:
          case BlockKind::mtp:
            dev.attn_f(b, s, db[m]);
            if (p.moe) {
              o.balance[b] = s.balance_loss;
              o.routing[b] = s.routing;
              dev.dispatch_f(b, s, "dispatch");
            }
            dev.mlp_f(b, s);
            if (p.moe) dev.combine_f(b, s, "combine");
            if (p.kind == BlockKind::mtp) {
              dev.loss_f(b, s, db[m]);
              o.mtp_loss = s.loss;
            }
        }
      }
    }
    compute.sync("blocks: forward");
    comm_stream.sync("blocks: forward (comm)");
    for (std::size_t m = 0; m < nmb; ++m)
      for (std::size_t b = 0; b < n; ++b)
        if (params[b].kind != BlockKind::head && params[b].kind != BlockKind::mtp) r.mb[m].out[b] = download(st[m][b].out);

    // Input-gradient passes.
    for (std::size_t b = n; b-- > 0;)
      for (std::size_t m = 0; m < nmb; ++m) {
        cu::DeviceBlockState& s = st[m][b];
        const rt::BlockParams& p = params[b];
        if (b + 1 < n && p.kind != BlockKind::mtp) s.d_out = st[m][b + 1].dx;
        switch (p.kind) {
          case BlockKind::embedding: break;
          case BlockKind::head: dev.mlp_b(b, s); break;
          case BlockKind::dense_layer:
          case BlockKind::moe_layer:
          case BlockKind::mtp:
            if (p.moe) dev.combine_b(b, s, "combine_b");
            dev.mlp_b(b, s);
            if (p.moe) dev.dispatch_b(b, s, "dispatch_b");
            dev.attn_b(b, s);
        }
      }
    // Weight passes, deferred; each block released after both of its micro-batches' passes.
    for (std::size_t b = n; b-- > 0;)
      for (std::size_t m = 0; m < nmb; ++m) {
        cu::DeviceBlockState& s = st[m][b];
        const BlockKind kind = params[b].kind;
        if (kind != BlockKind::embedding) dev.mlp_w(b, s);
        if (kind != BlockKind::head) dev.attn_w(b, s, db[m]);
        const bool had_dx = s.dx.size() > 0, had_out = s.out.size() > 0;
        dev.release(s);
        r.released_ok = r.released_ok && (s.dx.size() > 0) == had_dx && (s.out.size() > 0) == had_out &&
                        s.h.size() == 0 && s.d_out.size() == 0 && s.x.size() == 0 && !s.tok && !s.exp;
      }
    compute.sync("blocks: backward");
    comm_stream.sync("blocks: backward (comm)");
    for (std::size_t m = 0; m < nmb; ++m)
      for (std::size_t b = 0; b < n; ++b)
        if (params[b].kind != BlockKind::embedding) r.mb[m].dx[b] = download(st[m][b].dx);

    for (const rt::BlockParams& p : params) r.grads.push_back(rt::make_block_grads(*ctx.setup, p, 1));
    dev.grads().download(*ctx.setup, r.grads, compute.get());
    const std::size_t vh = idx(ctx.setup->card.vocab_size * ctx.setup->card.hidden_size);
    r.mtp_embed = to_host(dev.mtp_embed_grad(n - 1), vh);
    r.mtp_lm_head = to_host(dev.mtp_lm_head_grad(n - 1), vh);
  }
  cu::check(cudaDeviceSynchronize(), "blocks: done");
  return r;
}

// Records one comparison; `assert_it` false: printed only.
struct Report {
  bool assert_it = true;
  double worst = 0;
  std::string worst_what;
  void rel(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double tol) {
    const bool shaped = got.size() == want.size();
    const double e = shaped ? rel_l2(got, want) : 1e30;
    if (e > worst || worst_what.empty()) {
      worst = e;
      worst_what = what;
    }
    if (!shaped || e > tol || !assert_it)
      std::printf("  %-60s rel-L2 %.3g (tol %.0e)%s\n", what.c_str(), e, tol, shaped ? "" : " [shape differs]");
    if (assert_it) expect(shaped && e <= tol, "blocks: " + what + ": rel-L2 " + std::to_string(e) + " > " + std::to_string(tol));
  }
  void scalar(const std::string& what, double got, double want, double tol) {
    const double e = std::fabs(got - want) / std::max(std::fabs(want), 1e-30);
    std::printf("  %-60s %.9g vs %.9g (rel %.3g, tol %.0e)\n", what.c_str(), got, want, e, tol);
    if (assert_it) expect(std::isfinite(got) && e <= tol, "blocks: " + what + ": relative error " + std::to_string(e));
  }
};

// Every tensor of BlockGrads by name, in the walks' order (dense, then experts of source 0).
struct NamedTensor {
  std::string name;
  std::vector<float> v;
};
std::vector<NamedTensor> tensors(const rt::ModelSetup& setup, rt::BlockGrads& g) {
  std::vector<NamedTensor> out;
  rt::for_each_dense(g.dense, [&](const std::string& name, std::span<float> s) {
    out.push_back({name, std::vector<float>(s.begin(), s.end())});
  });
  if (g.dense.moe && !g.experts_by_src.empty())
    rt::for_each_expert(setup, g.dense.layer, g.dense.moe->first_expert, g.experts_by_src[0],
                        [&](const std::string& name, std::span<float> s) {
                          out.push_back({name, std::vector<float>(s.begin(), s.end())});
                        });
  return out;
}

void compare_runs(const rt::ModelSetup& setup, const std::vector<rt::BlockParams>& params, RunOut& dev, RunOut& cpu,
                  Report& rep, double tol_fwd, double tol_bwd) {
  const std::size_t n = params.size();
  if (rep.assert_it) expect(dev.mb.size() == cpu.mb.size(), "blocks: micro-batch counts differ");
  for (std::size_t m = 0; m < dev.mb.size() && m < cpu.mb.size(); ++m) {
    const MicroBatchOut &d = dev.mb[m], &c = cpu.mb[m];
    const std::string mb = "mb " + std::to_string(m) + " ";
    rep.scalar(mb + "head loss", d.loss, c.loss, tol_fwd);
    rep.scalar(mb + "mtp loss", d.mtp_loss, c.mtp_loss, tol_fwd);
    for (std::size_t b = 0; b < n; ++b) {
      if (!params[b].moe) continue;
      const std::string tag = mb + "block " + std::to_string(b) + " (layer " + std::to_string(params[b].layer) + ")";
      std::size_t differ = 0;
      const bool shaped = d.routing[b].size() == c.routing[b].size() && !c.routing[b].empty();
      for (std::size_t k = 0; shaped && k < c.routing[b].size(); ++k) differ += d.routing[b][k] != c.routing[b][k];
      std::printf("  %-60s %zu of %zu expert ids differ\n", (tag + " routing").c_str(), shaped ? differ : c.routing[b].size(),
                  c.routing[b].size());
      if (rep.assert_it)
        expect(shaped && differ == 0, "blocks: " + tag + ": the device routing differs from the CPU's (" +
                                          std::to_string(differ) + " expert ids): a near-tie in the router, see the header");
      rep.scalar(tag + " balance loss", d.balance[b], c.balance[b], tol_fwd);
    }
    for (std::size_t b = 0; b < n; ++b) {
      const std::string tag = mb + "block " + std::to_string(b) + " ";
      if (!c.out[b].empty()) rep.rel(tag + "out", d.out[b], c.out[b], b == 0 ? 0.0 : tol_fwd);
      if (!c.dx[b].empty()) rep.rel(tag + "dx", d.dx[b], c.dx[b], tol_bwd);
    }
  }
  for (std::size_t b = 0; b < n; ++b) {
    std::vector<NamedTensor> want = tensors(setup, cpu.grads[b]), got = tensors(setup, dev.grads[b]);
    if (rep.assert_it) expect(want.size() == got.size(), "blocks: block " + std::to_string(b) + ": gradient walks differ");
    for (std::size_t t = 0; t < want.size() && t < got.size(); ++t)
      rep.rel("grad " + want[t].name, got[t].v, want[t].v, tol_bwd);
  }
  rep.rel("grad mtp_embed (MTP contribution)", dev.mtp_embed, cpu.mtp_embed, tol_bwd);
  rep.rel("grad mtp_lm_head (MTP contribution)", dev.mtp_lm_head, cpu.mtp_lm_head, tol_bwd);
  std::printf("  worst: %s rel-L2 %.3g\n", rep.worst_what.c_str(), rep.worst);
}

void run_case(cu::Numerics numerics, bool asserted) {
  std::printf("blocks %s (%s)\n", tandem::gputest::name(numerics), asserted ? "asserted" : "informational");
  const ModelCard card = tiny_moe();
  const rt::ModelSetup setup = rt::make_setup(card, 1, numerics, 7);
  const rt::BlockContext ctx = make_context(setup);
  std::vector<rt::BlockParams> params = make_stage(setup);
  std::vector<rt::MicroBatchData> batches;
  for (int m = 0; m < kMicroBatches; ++m) batches.push_back(make_batch(static_cast<int>(card.vocab_size), m));
  RunOut cpu = run_cpu(ctx, params, batches);
  RunOut dev = run_device(ctx, params, batches, numerics);
  for (const MicroBatchOut& o : dev.mb)
    expect(std::isfinite(o.loss) && std::isfinite(o.mtp_loss), "blocks: device losses finite");
  expect(dev.released_ok, "blocks: release() keeps out and dx and drops the rest");
  const int before = tandem::gputest::failure_count();
  Report rep;
  rep.assert_it = asserted;
  compare_runs(setup, params, dev, cpu, rep, 1e-5, 1e-4);
  if (!asserted) tandem::gputest::set_failure_count(before);
}

}  // namespace

TANDEM_GPU_CHECK(blocks) {
  run_case(cu::Numerics::exact, true);
  run_case(cu::Numerics::fp8, false);
}
