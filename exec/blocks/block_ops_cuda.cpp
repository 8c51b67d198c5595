#include "exec/blocks/block_ops_cuda.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "common/signed_index.h"
#include "exec/ops/balance/balance_cuda.h"
#include "exec/ops/rmsnorm/rmsnorm_cuda.h"
#include "exec/ops/embedding/embedding_cuda.h"
#include "exec/ops/embedding/loss_cuda.h"
#include "exec/backends/cuda/infra/elementwise.h"

namespace tandem::cuda {

namespace {

using tandem::BlockKind;

std::size_t count_of(int64_t rows, int64_t cols) {
  return rows > 0 && cols > 0 ? idx(rows) * idx(cols) : 0;
}

int to_int(int64_t v, const char* what) {
  if (v < 0 || v > (int64_t{1} << 30)) throw std::invalid_argument(std::string("DeviceStageBlocks: ") + what + " out of range");
  return static_cast<int>(v);
}

// One copy of n floats on `stream` (n = 0: nothing).
void copy_d2d(float* dst, const float* src, std::size_t n, cudaStream_t stream, const char* what) {
  if (n == 0) return;
  check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream), what);
}

// n values from pageable host memory, enqueued on `stream` (the caller synchronises it).
template <class T>
DeviceBuffer<T> upload_on(const T* host, std::size_t n, cudaStream_t stream) {
  DeviceBuffer<T> d(n);
  if (n > 0) check(cudaMemcpyAsync(d.get(), host, n * sizeof(T), cudaMemcpyHostToDevice, stream), "DeviceStageBlocks: upload");
  return d;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// DeviceTensor, micro-batch upload

DeviceTensor DeviceTensor::make(int64_t rows, int64_t cols) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("DeviceTensor::make: negative rows or cols");
  DeviceTensor t;
  t.rows_ = rows;
  t.cols_ = cols;
  t.buf_ = std::make_shared<DeviceBuffer<float>>(count_of(rows, cols));
  return t;
}

DeviceMicroBatch upload_micro_batch(const runtime::MicroBatchData& d) {
  const std::size_t n = d.tokens.size();
  if (d.targets.size() != n) throw std::invalid_argument("upload_micro_batch: targets must have one entry per token");
  if (!d.mtp_targets.empty() && d.mtp_targets.size() != n)
    throw std::invalid_argument("upload_micro_batch: mtp_targets must be empty or have one entry per token");
  DeviceMicroBatch m;
  m.rows = to_int(static_cast<int64_t>(n), "micro-batch tokens");
  m.tokens = DeviceBuffer<int32_t>(n);
  m.targets = DeviceBuffer<int32_t>(n);
  m.mtp_targets = DeviceBuffer<int32_t>(d.mtp_targets.size());
  // Copies from pageable memory on a private stream, then a wait for that stream: synchronous
  // without a device-wide synchronisation (which could wait on other ranks' pending work).
  Stream s;
  auto put = [&](DeviceBuffer<int32_t>& dst, const std::vector<int32_t>& src) {
    if (src.empty()) return;
    check(cudaMemcpyAsync(dst.get(), src.data(), src.size() * sizeof(int32_t), cudaMemcpyHostToDevice, s.get()),
          "upload_micro_batch: H2D");
  };
  put(m.tokens, d.tokens);
  put(m.targets, d.targets);
  put(m.mtp_targets, d.mtp_targets);
  s.sync("upload_micro_batch: synchronise");
  return m;
}

// ---------------------------------------------------------------------------------------------
// The stage

namespace {

// One block's device views (pointers into the stage's flat buffers) and what it owns.
struct BlockDev {
  BlockKind kind = BlockKind::dense_layer;
  int64_t layer = -1;
  bool is_layer = false, has_moe = false, has_mtp = false, has_ffn = false;

  // embedding
  const float* embed = nullptr;
  float* g_embed = nullptr;
  // head (norm = model.norm / MTP: shared_head.norm; lm_head = the head's, shared by the MTP)
  const float* norm = nullptr;
  const float* lm_head = nullptr;
  float* g_norm = nullptr;
  float* g_lm_head = nullptr;  // head: the lm_head accumulator; MTP: its own contribution buffer
  // layer
  const float* input_ln = nullptr;
  const float* post_ln = nullptr;
  float* g_input_ln = nullptr;
  float* g_post_ln = nullptr;
  MlaDeviceWeights mla_w;
  MlaDeviceGrads mla_g;
  std::unique_ptr<MlaDevice> mla;
  DeviceFfnWeights ffn_w;
  DeviceFfnGrads ffn_g;
  DeviceFfnFp8Weights ffn_fp8;
  // MoE
  DeviceBuffer<float> bias;  // [n_routed] selection bias (not a parameter)
  DeviceMoeWeights moe_w;
  float* g_router = nullptr;
  DeviceFfnGrads g_shared;
  std::vector<std::vector<DeviceFfnGrads>> g_experts;  // [src][local]
  std::vector<DeviceFfnFp8Weights> expert_fp8;         // [local], sized once (stable addresses)
  DeviceFfnFp8Weights shared_fp8;
  // MTP
  DeviceMtpWeights mtp_w;
  DeviceMtpGrads mtp_gr;
  Fp8Weight eh_proj_fp8;
  DeviceBuffer<float> mtp_embed;    // [vocab, hidden] the MTP's copy of the embedding table
  DeviceBuffer<float> g_mtp_embed;  // [vocab, hidden]
  DeviceBuffer<float> g_mtp_lm_head;
};

}  // namespace

struct DeviceStageBlocks::Impl {
  const runtime::BlockContext& ctx;
  DeviceRankKit& kit;
  Numerics num;
  int hidden = 0, vocab = 0, seq_len = 0;
  float eps = 0;
  DeviceStageParams params;
  DeviceStageGrads grads;
  MoeConfig moe_cfg;
  std::unique_ptr<DeviceFfn> ffn;         // dense layers (hidden, intermediate_size): scratch only
  std::unique_ptr<DeviceFfn> quantizer;   // fp8: quantises the routed experts' weights (moe_inter wide)
  std::unique_ptr<DeviceFfn> shared_quantizer;  // fp8: the shared expert's (n_shared · moe_inter wide)
  std::unique_ptr<DeviceHead> head;       // head and MTP blocks
  std::unique_ptr<DeviceMtpProj> mtp;     // MTP blocks
  std::unique_ptr<DeviceMoeLayer> moe;    // MoE blocks (weights are passed per call)
  std::vector<std::unique_ptr<BlockDev>> blocks;
  // Scratch of the sub-steps that is not kept between them (grow-only, compute stream).
  DeviceBuffer<float> bal_P, bal_per_seq, bal_loss;
  DeviceBuffer<double> row_loss;

  Impl(const runtime::BlockContext& c, std::vector<runtime::BlockParams>& host, DeviceRankKit& k)
      : ctx(c), kit(k), num(c.setup->numerics), params(*c.setup, host),
        grads(params.layout(), std::max(1, c.setup->moe.ep.ep)) {}

  cudaStream_t stream() const { return kit.compute; }
  BlockDev& at(std::size_t i) {
    if (i >= blocks.size()) throw std::out_of_range("DeviceStageBlocks: block index " + std::to_string(i));
    return *blocks[i];
  }
  void set_device() const { check(cudaSetDevice(kit.device), "DeviceStageBlocks: cudaSetDevice"); }
};

namespace {

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

}  // namespace

DeviceStageBlocks::DeviceStageBlocks(const runtime::BlockContext& ctx, std::vector<runtime::BlockParams>& blocks,
                                     DeviceRankKit& kit) {
  if (!ctx.setup) throw std::invalid_argument("DeviceStageBlocks: ctx.setup is null");
  if (!kit.blas || !kit.lt || !kit.linear || !kit.comm)
    throw std::invalid_argument("DeviceStageBlocks: kit needs blas, lt, linear and comm");
  if (kit.linear->stream() != kit.compute || kit.blas->stream() != kit.compute)
    throw std::invalid_argument("DeviceStageBlocks: kit.compute must be the Blas's and the DeviceLinear's stream");
  check(cudaSetDevice(kit.device), "DeviceStageBlocks: cudaSetDevice");
  impl_ = std::make_unique<Impl>(ctx, blocks, kit);
  Impl& m = *impl_;
  const runtime::ModelSetup& setup = *ctx.setup;
  if (kit.linear->numerics() != m.num)
    throw std::invalid_argument("DeviceStageBlocks: kit.linear's numerics differ from the run's");
  m.hidden = to_int(setup.card.hidden_size, "hidden_size");
  m.vocab = to_int(setup.card.vocab_size, "vocab_size");
  m.seq_len = to_int(ctx.seq_len, "seq_len");
  m.eps = static_cast<float>(setup.card.rms_norm_eps);
  DeviceStageParams& P = m.params;
  DeviceStageGrads& G = m.grads;
  const MlaConfig& mla_cfg = setup.mla;
  Stream uploads;  // the bias / MTP table uploads and zeroing, waited for at the end

  int layer_blocks = 0;
  for (const runtime::BlockParams& p : blocks) layer_blocks += p.layer_w.has_value() ? 1 : 0;
  // Each layer keeps its own MlaDevice (its FP8 weight cache is per layer); the attention core's
  // workspace budget is split between them so a stage's total stays near the default.
  const std::size_t core_budget =
      std::max<std::size_t>(std::size_t{256} << 20, MlaDevice::kDefaultCoreBudget / idx(std::max(1, layer_blocks)));

  for (runtime::BlockParams& p : blocks) {
    auto b = std::make_unique<BlockDev>();
    b->kind = p.kind;
    b->layer = p.layer;
    switch (p.kind) {
      case BlockKind::embedding:
        b->embed = P.dense_tensor("model.embed_tokens.weight");
        b->g_embed = G.dense_tensor("model.embed_tokens.weight");
        break;
      case BlockKind::head:
        b->norm = P.dense_tensor("model.norm.weight");
        b->g_norm = G.dense_tensor("model.norm.weight");
        b->lm_head = P.dense_tensor("lm_head.weight");
        b->g_lm_head = G.dense_tensor("lm_head.weight");
        break;
      case BlockKind::dense_layer:
      case BlockKind::moe_layer:
      case BlockKind::mtp:
        break;
    }
    if (p.layer_w) {
      const std::string pre = layer_prefix(p.layer);
      b->is_layer = true;
      b->input_ln = P.dense_tensor(pre + "input_layernorm.weight");
      b->g_input_ln = G.dense_tensor(pre + "input_layernorm.weight");
      b->post_ln = P.dense_tensor(pre + "post_attention_layernorm.weight");
      b->g_post_ln = G.dense_tensor(pre + "post_attention_layernorm.weight");
      auto both = [&](const std::string& name, const float*& w, float*& g) {
        w = P.dense_tensor(pre + "self_attn." + name + ".weight");
        g = G.dense_tensor(pre + "self_attn." + name + ".weight");
      };
      if (mla_cfg.q_lora_rank > 0) {
        both("q_a_proj", b->mla_w.q_a_proj, b->mla_g.q_a_proj);
        both("q_a_layernorm", b->mla_w.q_a_layernorm, b->mla_g.q_a_layernorm);
        both("q_b_proj", b->mla_w.q_b_proj, b->mla_g.q_b_proj);
      } else {
        both("q_proj", b->mla_w.q_proj, b->mla_g.q_proj);
      }
      both("kv_a_proj_with_mqa", b->mla_w.kv_a_proj_with_mqa, b->mla_g.kv_a_proj_with_mqa);
      both("kv_a_layernorm", b->mla_w.kv_a_layernorm, b->mla_g.kv_a_layernorm);
      both("kv_b_proj", b->mla_w.kv_b_proj, b->mla_g.kv_b_proj);
      both("o_proj", b->mla_w.o_proj, b->mla_g.o_proj);
      b->mla = std::make_unique<MlaDevice>(mla_cfg, *kit.blas, *kit.linear, core_budget);
      if (p.layer_w->mlp && !p.moe) {
        b->has_ffn = true;
        b->ffn_w = {P.dense_tensor(pre + "mlp.gate_proj.weight"), P.dense_tensor(pre + "mlp.up_proj.weight"),
                    P.dense_tensor(pre + "mlp.down_proj.weight"), nullptr};
        b->ffn_g = {G.dense_tensor(pre + "mlp.gate_proj.weight"), G.dense_tensor(pre + "mlp.up_proj.weight"),
                    G.dense_tensor(pre + "mlp.down_proj.weight")};
        if (!m.ffn)
          m.ffn = std::make_unique<DeviceFfn>(*kit.linear, m.hidden, to_int(setup.card.intermediate_size, "intermediate_size"));
      }
    }
    if (p.moe) {
      if (!p.layer_w) throw std::invalid_argument("DeviceStageBlocks: a MoE block without a layer");
      const std::string pre = layer_prefix(p.layer);
      b->has_moe = true;
      if (!m.moe) {
        m.moe_cfg = setup.moe;  // the wires as the run's setup chose them: the device sends what the CPU sends
        m.moe = std::make_unique<DeviceMoeLayer>(m.moe_cfg, *kit.blas, *kit.linear, *kit.comm, kit.ep_group,
                                                 kit.comm_stream);
        if (m.moe->ep_rank() != ctx.member)
          throw std::invalid_argument("DeviceStageBlocks: the communicator's place in kit.ep_group (" +
                                      std::to_string(m.moe->ep_rank()) + ") is not ctx.member (" +
                                      std::to_string(ctx.member) + ")");
        if (m.num == Numerics::fp8) {
          m.quantizer = std::make_unique<DeviceFfn>(*kit.linear, m.moe_cfg.hidden, m.moe_cfg.moe_inter);
          if (m.moe_cfg.n_shared > 0)
            m.shared_quantizer = std::make_unique<DeviceFfn>(*kit.linear, m.moe_cfg.hidden,
                                                             m.moe_cfg.n_shared * m.moe_cfg.moe_inter);
        }
      }
      const int E = m.moe_cfg.router.n_routed, per = m.moe_cfg.experts_per_rank();
      if (p.moe->bias.size() != E) throw std::invalid_argument("DeviceStageBlocks: router bias size != n_routed");
      if (static_cast<int>(p.moe->experts.size()) != per || p.moe->first_expert != m.moe->first_expert())
        throw std::invalid_argument("DeviceStageBlocks: the MoE block's experts are not this member's");
      b->bias = upload_on(p.moe->bias.data(), idx(E), uploads.get());
      b->moe_w.router = P.dense_tensor(pre + "mlp.gate.weight");
      b->moe_w.bias = b->bias.get();
      b->g_router = G.dense_tensor(pre + "mlp.gate.weight");
      const std::string ep = pre + "mlp.experts.";
      for (int e = 0; e < per; ++e) {
        const std::string x = ep + std::to_string(p.moe->first_expert + e) + ".";
        b->moe_w.experts.push_back({P.expert_tensor(x + "gate_proj.weight"), P.expert_tensor(x + "up_proj.weight"),
                                    P.expert_tensor(x + "down_proj.weight"), nullptr});
      }
      b->g_experts.resize(idx(G.sources()));
      for (int s = 0; s < G.sources(); ++s)
        for (int e = 0; e < per; ++e) {
          const std::string x = ep + std::to_string(p.moe->first_expert + e) + ".";
          b->g_experts[idx(s)].push_back({G.expert_tensor(s, x + "gate_proj.weight"),
                                                                G.expert_tensor(s, x + "up_proj.weight"),
                                                                G.expert_tensor(s, x + "down_proj.weight")});
        }
      b->expert_fp8.resize(idx(per));
      if (m.moe_cfg.n_shared > 0) {
        const std::string sh = pre + "mlp.shared_experts.";
        b->moe_w.shared = {P.dense_tensor(sh + "gate_proj.weight"), P.dense_tensor(sh + "up_proj.weight"),
                           P.dense_tensor(sh + "down_proj.weight"), nullptr};
        b->g_shared = {G.dense_tensor(sh + "gate_proj.weight"), G.dense_tensor(sh + "up_proj.weight"),
                       G.dense_tensor(sh + "down_proj.weight")};
      }
    }
    if (p.kind == BlockKind::mtp) {
      if (!p.mtp || !p.layer_w) throw std::invalid_argument("DeviceStageBlocks: an MTP block without its module");
      const std::string pre = layer_prefix(p.layer);
      b->has_mtp = true;
      b->mtp_w = {P.dense_tensor(pre + "hnorm.weight"), P.dense_tensor(pre + "enorm.weight"),
                  P.dense_tensor(pre + "eh_proj.weight"), nullptr};
      b->mtp_gr = {G.dense_tensor(pre + "hnorm.weight"), G.dense_tensor(pre + "enorm.weight"),
                   G.dense_tensor(pre + "eh_proj.weight")};
      b->norm = P.dense_tensor(pre + "shared_head.norm.weight");
      b->g_norm = G.dense_tensor(pre + "shared_head.norm.weight");
      // The shared output head is the head block's lm_head on this stage (link_shared_head's rule).
      bool has_head = false;
      for (const runtime::BlockParams& q : blocks) has_head = has_head || q.kind == BlockKind::head;
      if (!has_head) throw std::invalid_argument("DeviceStageBlocks: an MTP block without the head on its stage");
      b->lm_head = P.dense_tensor("lm_head.weight");
      const std::size_t vh = count_of(m.vocab, m.hidden);
      if (idx(p.mtp_embed.size()) != vh)
        throw std::invalid_argument("DeviceStageBlocks: the MTP block's embedding copy is not [vocab, hidden]");
      b->mtp_embed = upload_on(p.mtp_embed.data(), vh, uploads.get());
      b->g_mtp_embed = DeviceBuffer<float>(vh);
      b->g_mtp_lm_head = DeviceBuffer<float>(vh);
      b->g_lm_head = b->g_mtp_lm_head.get();
      check(cudaMemsetAsync(b->g_mtp_embed.get(), 0, b->g_mtp_embed.bytes(), uploads.get()), "DeviceStageBlocks: zero");
      check(cudaMemsetAsync(b->g_mtp_lm_head.get(), 0, b->g_mtp_lm_head.bytes(), uploads.get()),
            "DeviceStageBlocks: zero");
      if (!m.mtp) m.mtp = std::make_unique<DeviceMtpProj>(*kit.linear, m.hidden, setup.card.rms_norm_eps);
    }
    if ((p.kind == BlockKind::head || p.kind == BlockKind::mtp) && !m.head)
      m.head = std::make_unique<DeviceHead>(*kit.blas, *kit.lt, m.num, m.hidden, m.vocab, setup.card.rms_norm_eps);
    m.blocks.push_back(std::move(b));
  }
  // Synchronous, without a device-wide wait (other ranks may share the device).
  uploads.sync("DeviceStageBlocks: uploads");
}

DeviceStageBlocks::~DeviceStageBlocks() = default;

std::size_t DeviceStageBlocks::size() const { return impl_->blocks.size(); }
DeviceStageParams& DeviceStageBlocks::params() { return impl_->params; }
DeviceStageGrads& DeviceStageBlocks::grads() { return impl_->grads; }

void DeviceStageBlocks::begin_step() {
  Impl& m = *impl_;
  m.set_device();
  const cudaStream_t s = m.stream();
  m.grads.zero(s);
  for (auto& bp : m.blocks) {
    BlockDev& b = *bp;
    if (b.g_mtp_embed.get())
      check(cudaMemsetAsync(b.g_mtp_embed.get(), 0, b.g_mtp_embed.bytes(), s), "begin_step: zero mtp_embed");
    if (b.g_mtp_lm_head.get())
      check(cudaMemsetAsync(b.g_mtp_lm_head.get(), 0, b.g_mtp_lm_head.bytes(), s), "begin_step: zero mtp_lm_head");
  }
  if (m.num != Numerics::fp8) return;
  // fp8: the optimizer changed the weights; quantise every GEMM weight once for the step.
  for (auto& bp : m.blocks) {
    BlockDev& b = *bp;
    if (b.mla) b.mla->prepare_weights(b.mla_w);
    if (b.has_ffn) {
      b.ffn_w.fp8 = nullptr;
      m.ffn->quantize_weights(b.ffn_w, b.ffn_fp8);
      b.ffn_w.fp8 = &b.ffn_fp8;
    }
    if (b.has_moe) {
      for (std::size_t e = 0; e < b.moe_w.experts.size(); ++e) {
        b.moe_w.experts[e].fp8 = nullptr;
        m.quantizer->quantize_weights(b.moe_w.experts[e], b.expert_fp8[e]);
        b.moe_w.experts[e].fp8 = &b.expert_fp8[e];
      }
      if (m.moe_cfg.n_shared > 0) {
        b.moe_w.shared.fp8 = nullptr;
        m.shared_quantizer->quantize_weights(b.moe_w.shared, b.shared_fp8);
        b.moe_w.shared.fp8 = &b.shared_fp8;
      }
    }
    if (b.has_mtp) {
      b.mtp_w.eh_proj_fp8 = nullptr;
      m.kit.linear->quantize_weight(ConstDeviceMat(b.mtp_w.eh_proj, m.hidden, 2 * m.hidden), b.eh_proj_fp8);
      b.mtp_w.eh_proj_fp8 = &b.eh_proj_fp8;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward

void DeviceStageBlocks::attn_f(std::size_t i, DeviceBlockState& s, const DeviceMicroBatch& data) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  m.set_device();
  const cudaStream_t st = m.stream();
  const int H = m.hidden;
  if (b.kind == BlockKind::embedding) {
    s.out = DeviceTensor::make(data.rows, H);
    embedding_forward(b.embed, m.vocab, H, data.tokens.get(), data.rows, s.out.data(), nullptr, st);
    return;
  }
  if (!b.is_layer) throw std::logic_error("attn_f on a block without attention");
  if (b.has_mtp) {
    // s.x holds h (the head's input); the layer's input is the projection's output.
    if (s.x.rows() != data.rows) throw std::invalid_argument("attn_f (mtp): s.x must hold the micro-batch's h");
    s.emb = DeviceTensor::make(data.rows, H);
    embedding_forward(b.mtp_embed.get(), m.vocab, H, data.targets.get(), data.rows, s.emb.data(), nullptr, st);
    DeviceTensor proj = DeviceTensor::make(data.rows, H);
    m.mtp->forward(b.mtp_w, s.x.data(), s.emb.data(), data.rows, proj.data(), &s.mtp);
    s.x = std::move(proj);
  }
  const int rows = to_int(s.x.rows(), "rows");
  if (s.x.cols() != H) throw std::invalid_argument("attn_f: s.x must be [rows, hidden]");
  const std::size_t n = count_of(rows, H);
  s.xn1 = DeviceBuffer<float>(n);
  s.inv_rms1 = DeviceBuffer<float>(idx(rows));
  rmsnorm_forward(s.x.data(), b.input_ln, rows, H, m.eps, s.xn1.get(), s.inv_rms1.get(), st);
  s.h = DeviceTensor::make(rows, H);
  b.mla->forward(b.mla_w, s.xn1.get(), rows, m.seq_len, s.h.data(), &s.mla);
  add(s.x.data(), s.h.data(), n, s.h.data(), st);  // h = x + attn
  s.xn = DeviceTensor::make(rows, H);
  s.inv_rms2 = DeviceBuffer<float>(idx(rows));
  rmsnorm_forward(s.h.data(), b.post_ln, rows, H, m.eps, s.xn.data(), s.inv_rms2.get(), st);
  if (!b.has_moe) return;
  s.tok = std::make_unique<DeviceMoeTokenState>();
  m.moe->route(b.moe_w, s.xn.data(), rows, *s.tok);  // synchronises compute: the ids come to the host
  s.routing = s.tok->expert_host;
  m.moe->dispatch_pack(*s.tok);
  if (m.ctx.balance_alpha > 0) {
    const int E = m.moe_cfg.router.n_routed, K = m.moe_cfg.router.top_k;
    if (m.seq_len <= 0 || rows % m.seq_len != 0)
      throw std::invalid_argument("attn_f: the micro-batch's rows are not whole sequences");
    const std::size_t seqs = idx(rows / m.seq_len);
    s.balance_f = DeviceBuffer<float>(seqs * idx(E));
    float* P = m.bal_P.reserve(std::max<std::size_t>(1, seqs * idx(E)), st);
    float* per_seq = m.bal_per_seq.reserve(std::max<std::size_t>(1, seqs), st);
    float* loss = m.bal_loss.reserve(1, st);
    balance_loss_forward(s.tok->scores.get(), s.tok->expert.get(), rows, E, K, m.seq_len, m.ctx.balance_alpha,
                         s.balance_f.get(), P, per_seq, loss, st);
    float host_loss = 0;
    check(cudaMemcpyAsync(&host_loss, loss, sizeof(float), cudaMemcpyDeviceToHost, st), "attn_f: balance loss D2H");
    check(cudaStreamSynchronize(st), "attn_f: balance loss");
    s.balance_loss = static_cast<double>(host_loss) * m.ctx.balance_scale;
  }
}

void DeviceStageBlocks::dispatch_f(std::size_t i, DeviceBlockState& s, const std::string& label) {
  (void)label;  // DeviceMoeLayer labels its own transfers
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  if (!b.has_moe || !s.tok) throw std::logic_error("dispatch_f: not a routed MoE block");
  m.set_device();
  s.exp = std::make_unique<DeviceMoeExpertState>();
  m.moe->dispatch(*s.tok, *s.exp);
}

void DeviceStageBlocks::mlp_f(std::size_t i, DeviceBlockState& s) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  m.set_device();
  const cudaStream_t st = m.stream();
  if (b.kind == BlockKind::head) {
    const int rows = to_int(s.x.rows(), "rows");
    s.out = DeviceTensor::make(rows, m.vocab);  // the logits
    m.head->forward(b.norm, b.lm_head, s.x.data(), rows, s.out.data(), &s.head);
    return;
  }
  if (!b.is_layer) throw std::logic_error("mlp_f on a block without an MLP");
  const int rows = to_int(s.h.rows(), "rows");
  if (b.has_moe) {
    if (!s.exp) throw std::logic_error("mlp_f: dispatch_f first");
    m.moe->experts_forward(b.moe_w, *s.exp);
    m.moe->combine_pack(*s.exp);
    m.moe->shared_forward(b.moe_w, *s.tok);
    return;
  }
  s.out = DeviceTensor::make(rows, m.hidden);
  m.ffn->forward(b.ffn_w, s.xn.data(), rows, s.out.data(), &s.ffn);
  add(s.h.data(), s.out.data(), count_of(rows, m.hidden), s.out.data(), st);  // out = h + ffn
}

void DeviceStageBlocks::combine_f(std::size_t i, DeviceBlockState& s, const std::string& label) {
  (void)label;
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  if (!b.has_moe || !s.tok || !s.exp) throw std::logic_error("combine_f: not a dispatched MoE block");
  m.set_device();
  const int rows = to_int(s.h.rows(), "rows");
  s.out = DeviceTensor::make(rows, m.hidden);
  m.moe->combine(*s.exp, *s.tok, s.out.data());  // routed + shared
  add(s.h.data(), s.out.data(), count_of(rows, m.hidden), s.out.data(), m.stream());  // out = h + (routed + shared)
}

void DeviceStageBlocks::loss_f(std::size_t i, DeviceBlockState& s, const DeviceMicroBatch& data) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  m.set_device();
  const cudaStream_t st = m.stream();
  if (s.scalar.size() < 1) s.scalar = DeviceBuffer<double>(1);
  double host_loss = 0;
  if (b.kind == BlockKind::mtp) {
    const int rows = to_int(s.out.rows(), "rows");
    if (data.mtp_targets.size() != idx(rows))
      throw std::invalid_argument("loss_f (mtp): the micro-batch has no mtp_targets for its rows");
    s.dlogits = DeviceBuffer<float>(count_of(rows, m.vocab));
    m.head->forward_loss(b.norm, b.lm_head, s.out.data(), rows, data.mtp_targets.get(), m.ctx.mtp_loss_scale,
                         s.dlogits.get(), s.scalar.get(), nullptr, &s.head);
    m.head->backward_input(b.norm, b.lm_head, s.head, s.dlogits.get(), s.head_g);
    s.d_out = DeviceTensor::make(rows, m.hidden);
    copy_d2d(s.d_out.data(), s.head_g.dh.get(), count_of(rows, m.hidden), st, "loss_f (mtp): d_out");
  } else {
    if (b.kind != BlockKind::head) throw std::logic_error("loss_f on a block without a loss");
    const int rows = to_int(s.out.rows(), "rows");
    if (data.rows != rows) throw std::invalid_argument("loss_f: the logits' rows differ from the micro-batch's");
    s.dlogits = DeviceBuffer<float>(count_of(rows, m.vocab));
    double* row_loss = m.row_loss.reserve(idx(std::max(rows, 1)), st);
    cross_entropy(s.out.data(), rows, m.vocab, data.targets.get(), m.ctx.loss_scale, s.dlogits.get(), row_loss,
                  s.scalar.get(), st);
  }
  check(cudaMemcpyAsync(&host_loss, s.scalar.get(), sizeof(double), cudaMemcpyDeviceToHost, st), "loss_f: loss D2H");
  check(cudaStreamSynchronize(st), "loss_f: loss");
  s.loss = host_loss;
  // The logits (head) / the layer's output (MTP: the head's forward copied it) are not needed any more.
  s.out = DeviceTensor{};
}

// ---------------------------------------------------------------------------------------------
// Backward

void DeviceStageBlocks::combine_b(std::size_t i, DeviceBlockState& s, const std::string& label) {
  (void)label;
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  if (!b.has_moe || !s.tok || !s.exp) throw std::logic_error("combine_b: not a dispatched MoE block");
  if (s.d_out.rows() != s.tok->tokens || s.d_out.cols() != m.hidden)
    throw std::invalid_argument("combine_b: s.d_out must be [tokens, hidden]");
  m.set_device();
  m.moe->combine_backward(*s.tok, *s.exp, s.d_out.data());
}

void DeviceStageBlocks::mlp_b(std::size_t i, DeviceBlockState& s) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  m.set_device();
  const cudaStream_t st = m.stream();
  if (b.kind == BlockKind::head) {
    m.head->backward_input(b.norm, b.lm_head, s.head, s.dlogits.get(), s.head_g);
    const int rows = s.head_g.rows;
    const std::size_t n = count_of(rows, m.hidden);
    s.dx = DeviceTensor::make(rows, m.hidden);
    // The MTP module's gradient w.r.t. h (its d_out here), head + MTP in that order.
    if (s.d_out.size() > 0) {
      if (idx(s.d_out.size()) != n) throw std::invalid_argument("mlp_b (head): s.d_out shape");
      add(s.head_g.dh.get(), s.d_out.data(), n, s.dx.data(), st);
    } else {
      copy_d2d(s.dx.data(), s.head_g.dh.get(), n, st, "mlp_b (head): dx");
    }
    return;
  }
  if (!b.is_layer) throw std::logic_error("mlp_b on a block without an MLP");
  const int rows = to_int(s.h.rows(), "rows");
  if (s.d_out.rows() != rows || s.d_out.cols() != m.hidden)
    throw std::invalid_argument("mlp_b: s.d_out must be [rows, hidden]");
  if (b.has_moe) {
    if (!s.tok || !s.exp) throw std::logic_error("mlp_b: not a dispatched MoE block");
    m.moe->experts_backward_input(b.moe_w, *s.exp);
    m.moe->shared_backward_input(b.moe_w, *s.tok, s.d_out.data());
    return;
  }
  s.d_xn = DeviceTensor::make(rows, m.hidden);
  m.ffn->backward_input(b.ffn_w, s.ffn, s.d_out.data(), s.d_xn.data(), s.ffn_g);
}

void DeviceStageBlocks::dispatch_b(std::size_t i, DeviceBlockState& s, const std::string& label) {
  (void)label;
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  if (!b.has_moe || !s.tok || !s.exp) throw std::logic_error("dispatch_b: not a dispatched MoE block");
  m.set_device();
  m.moe->dispatch_backward(*s.exp, *s.tok);
}

void DeviceStageBlocks::attn_b(std::size_t i, DeviceBlockState& s) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  if (b.kind == BlockKind::embedding) return;  // token ids have no gradient
  if (!b.is_layer) throw std::logic_error("attn_b on a block without attention");
  m.set_device();
  const cudaStream_t st = m.stream();
  const int H = m.hidden;
  const int rows = to_int(s.h.rows(), "rows");
  const std::size_t n = count_of(rows, H);
  if (s.d_out.size() != static_cast<int64_t>(n)) throw std::invalid_argument("attn_b: s.d_out must be [rows, hidden]");
  if (b.has_moe) {
    if (!s.tok) throw std::logic_error("attn_b: not a routed MoE block");
    const float* d_scores = nullptr;
    if (m.ctx.balance_alpha > 0) {
      const int E = m.moe_cfg.router.n_routed;
      s.d_scores = DeviceBuffer<float>(count_of(rows, E));
      balance_loss_backward(s.balance_f.get(), s.tok->scores.get(), rows, E, m.seq_len, m.ctx.balance_alpha,
                            static_cast<float>(m.ctx.balance_scale), s.d_scores.get(), st);
      d_scores = s.d_scores.get();
    }
    s.d_xn = DeviceTensor::make(rows, H);
    m.moe->router_backward_input(b.moe_w, *s.tok, d_scores, s.d_xn.data());  // (dx_routed + dx_router) + shared
  }
  if (s.d_xn.size() != static_cast<int64_t>(n)) throw std::logic_error("attn_b: mlp_b first");
  // d_h = d_out + rmsnorm_backward_input(h, post_attention_layernorm, d_xn)
  s.d_h = DeviceTensor::make(rows, H);
  rmsnorm_backward_input(s.h.data(), b.post_ln, s.d_xn.data(), rows, H, m.eps, s.d_h.data(), st);
  add(s.d_out.data(), s.d_h.data(), n, s.d_h.data(), st);
  b.mla->backward_input(b.mla_w, s.mla, s.d_h.data(), s.mla_g);
  // dx = d_h + rmsnorm_backward_input(x, input_layernorm, mla_g.dx)
  s.dx = DeviceTensor::make(rows, H);
  rmsnorm_backward_input(s.x.data(), b.input_ln, s.mla_g.dx.get(), rows, H, m.eps, s.dx.data(), st);
  add(s.d_h.data(), s.dx.data(), n, s.dx.data(), st);
  if (b.has_mtp) {
    s.d_proj_out = std::move(s.dx);
    m.mtp->backward_input(b.mtp_w, s.mtp, s.d_proj_out.data(), s.mtp_g);
    s.dx = DeviceTensor::make(rows, H);
    copy_d2d(s.dx.data(), s.mtp_g.dh.get(), n, st, "attn_b (mtp): dx");
  }
}

void DeviceStageBlocks::mlp_w(std::size_t i, DeviceBlockState& s) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  m.set_device();
  if (b.kind == BlockKind::head) {
    m.head->backward_weight(s.head, s.head_g, s.dlogits.get(), b.g_norm, b.g_lm_head);
    return;
  }
  if (!b.is_layer) throw std::logic_error("mlp_w on a block without an MLP");
  if (b.has_moe) {
    if (!s.tok || !s.exp) throw std::logic_error("mlp_w: not a dispatched MoE block");
    m.moe->experts_backward_weight(*s.exp, b.g_experts);
    m.moe->shared_backward_weight(*s.tok, s.d_out.data(), b.g_shared);
  } else {
    m.ffn->backward_weight(s.ffn, s.ffn_g, s.d_out.data(), b.ffn_g);
  }
  if (b.has_mtp) m.head->backward_weight(s.head, s.head_g, s.dlogits.get(), b.g_norm, b.g_lm_head);
}

void DeviceStageBlocks::attn_w(std::size_t i, DeviceBlockState& s, const DeviceMicroBatch& data) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  m.set_device();
  const cudaStream_t st = m.stream();
  const int H = m.hidden;
  if (b.kind == BlockKind::embedding) {
    if (s.d_out.rows() != data.rows) throw std::invalid_argument("attn_w (embedding): s.d_out must be [tokens, hidden]");
    embedding_backward(data.tokens.get(), data.rows, s.d_out.data(), m.vocab, H, b.g_embed, nullptr, st);
    return;
  }
  if (!b.is_layer) throw std::logic_error("attn_w on a block without attention");
  const int rows = to_int(s.h.rows(), "rows");
  rmsnorm_weight_accumulate(s.h.data(), H, s.d_xn.data(), H, s.inv_rms2.get(), rows, H, b.g_post_ln, st);
  b.mla->backward_weight(s.mla, s.mla_g, s.d_h.data(), b.mla_g);
  rmsnorm_weight_accumulate(s.x.data(), H, s.mla_g.dx.get(), H, s.inv_rms1.get(), rows, H, b.g_input_ln, st);
  if (b.has_moe) m.moe->router_backward_weight(*s.tok, b.g_router);
  if (b.has_mtp) {
    m.mtp->backward_weight(s.mtp, s.mtp_g, s.d_proj_out.data(), b.mtp_gr);
    embedding_backward(data.targets.get(), data.rows, s.mtp_g.d_emb.get(), m.vocab, H, b.g_mtp_embed.get(), nullptr,
                       st);
  }
}

void DeviceStageBlocks::release(DeviceBlockState& s) {
  impl_->set_device();
  // runtime::release's effect, member by member, WITHOUT touching out and dx (not even a move out
  // and back): the rank's comm thread may read them at this very moment (pp_send of the stage's
  // output / input gradient runs concurrently with the weight passes that end in release). The
  // loss values stay, as there (reported after the step).
  s.x = DeviceTensor{};
  s.d_out = DeviceTensor{};
  s.routing = {};
  s.h = DeviceTensor{};
  s.xn = DeviceTensor{};
  s.d_h = DeviceTensor{};
  s.d_xn = DeviceTensor{};
  s.xn1 = DeviceBuffer<float>{};
  s.inv_rms1 = DeviceBuffer<float>{};
  s.inv_rms2 = DeviceBuffer<float>{};
  s.mla = MlaDeviceSaved{};
  s.mla_g = MlaDeviceInputGrad{};
  s.ffn = DeviceFfnSaved{};
  s.ffn_g = DeviceFfnInputGrad{};
  s.tok.reset();
  s.exp.reset();
  s.logits = DeviceTensor{};
  s.dlogits = DeviceBuffer<float>{};
  s.head = DeviceHeadSaved{};
  s.head_g = DeviceHeadInputGrad{};
  s.balance_f = DeviceBuffer<float>{};
  s.d_scores = DeviceBuffer<float>{};
  s.mtp = DeviceMtpSaved{};
  s.mtp_g = DeviceMtpInputGrad{};
  s.emb = DeviceTensor{};
  s.d_proj_out = DeviceTensor{};
  s.scalar = DeviceBuffer<double>{};
}

// ---------------------------------------------------------------------------------------------
// Shared tensors of the MTP block, router bias

float* DeviceStageBlocks::mtp_embed_grad(std::size_t i) {
  BlockDev& b = impl_->at(i);
  if (!b.has_mtp) throw std::invalid_argument("mtp_embed_grad: block " + std::to_string(i) + " is not an MTP block");
  return b.g_mtp_embed.get();
}

float* DeviceStageBlocks::mtp_lm_head_grad(std::size_t i) {
  BlockDev& b = impl_->at(i);
  if (!b.has_mtp) throw std::invalid_argument("mtp_lm_head_grad: block " + std::to_string(i) + " is not an MTP block");
  return b.g_mtp_lm_head.get();
}

float* DeviceStageBlocks::mtp_embed_table(std::size_t i) {
  BlockDev& b = impl_->at(i);
  if (!b.has_mtp) throw std::invalid_argument("mtp_embed_table: block " + std::to_string(i) + " is not an MTP block");
  return b.mtp_embed.get();
}

void DeviceStageBlocks::set_router_bias(std::size_t i, std::span<const float> bias) {
  Impl& m = *impl_;
  BlockDev& b = m.at(i);
  if (!b.has_moe) throw std::invalid_argument("set_router_bias: block " + std::to_string(i) + " is not a MoE block");
  if (bias.size() != b.bias.size()) throw std::invalid_argument("set_router_bias: bias must hold n_routed values");
  m.set_device();
  // Pageable source: cudaMemcpyAsync stages it before returning, so the span may go away at once;
  // the copy is ordered on compute before every later route.
  if (!bias.empty())
    check(cudaMemcpyAsync(b.bias.get(), bias.data(), bias.size_bytes(), cudaMemcpyHostToDevice, m.stream()),
          "set_router_bias: H2D");
}

}  // namespace tandem::cuda
