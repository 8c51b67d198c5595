// GPU checks of the device stage buffers (exec/blocks/block_params_cuda.h) and ZeRO-1
// (exec/backends/cuda/zero1.h):
//   device_params  tiny-moe stages (embedding + dense layer; two MoE layers of EP member 1 of 2;
//                  head + MTP): the name table is the CPU's walk (every tensor once, in order,
//                  contiguous offsets); upload → download bit-identical (also -0 and NaN payloads);
//                  per-tensor device pointers hold the tensor; gradients upload → download
//                  bit-identical, fold_experts == the CPU's source-order fold bit for bit, and
//                  idempotent; zero() zeroes.
//   zero1          VirtualRankWorld, 4 ranks, one stage (dense layer 0 + MoE layer 1): (a) DP group
//                  {0,1,2,3} for both, one source, FP32 moments; (b) DP {2,0,1} (uneven shards,
//                  group order ≠ rank order), expert-DP {1,0} and {2} (a group of one), two
//                  sources, BF16 moments, rank 3 idle. Two steps of random gradients; every rank's
//                  flat parameters == the host's flatten → group-order sum → nn::adamw_step →
//                  gather BIT FOR BIT (group-order reduce-scatter and adamw_step are bit-identical
//                  by construction; copies are exact).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/blocks/block_params_cuda.h"
#include "exec/backends/cuda/zero1.h"
#include "exec/backends/cuda/comm/virtual_ranks.h"
#include "exec/ops/adamw/adamw.h"
#include "exec/blocks/block_params.h"
#include "models/model_card.h"
#include "tests/gpu/gpu_check.h"
#include "tests/test_paths.h"

using tandem::idx;

namespace {

namespace cu = tandem::cuda;
namespace rt = tandem::runtime;
namespace nn = tandem::nn;
using tandem::BlockKind;
using tandem::ModelCard;
using tandem::gputest::expect;
using tandem::gputest::same_bits;
using tandem::gputest::to_host;

ModelCard tiny_moe() {
  const auto r = tandem::load_model_card(tandem::test::repo("models/tiny-moe.yaml"));
  if (!r.ok()) throw std::runtime_error("cannot read models/tiny-moe.yaml");
  return r.value();
}

std::vector<rt::BlockParams> make_stage(const rt::ModelSetup& s, const std::vector<std::pair<BlockKind, int64_t>>& blocks,
                                        int member) {
  std::vector<rt::BlockParams> out;
  for (const auto& [kind, layer] : blocks) {
    tandem::Block b;
    b.kind = kind;
    b.layer = layer;
    out.push_back(rt::make_block_params(s, b, member));
  }
  return out;
}

// Deterministic pseudo-random floats of assorted magnitudes (splitmix64).
struct Rng {
  uint64_t x;
  uint64_t next() {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(static_cast<double>(next() >> 11) * 0x1.0p-53 * 2.0 - 1.0); }
  float grad() {
    static const float kScale[4] = {1.0f, 1e-1f, 1e-3f, 1e-6f};
    return uniform() * kScale[next() & 3];
  }
};

std::vector<float> random_vector(std::size_t n, uint64_t seed) {
  Rng r{seed};
  std::vector<float> v(n);
  for (float& f : v) f = r.grad();
  return v;
}

struct Named {
  std::string name;
  std::size_t size;
};
using Walk = std::function<void(const std::string&, std::span<float>)>;

std::vector<Named> dense_walk(std::vector<rt::BlockParams>& blocks) {
  std::vector<Named> w;
  for (rt::BlockParams& b : blocks)
    rt::for_each_dense(b, [&](const std::string& n, std::span<float> s) { w.push_back({n, s.size()}); });
  return w;
}

std::vector<Named> expert_walk(const rt::ModelSetup& setup, std::vector<rt::BlockParams>& blocks) {
  std::vector<Named> w;
  for (rt::BlockParams& b : blocks)
    if (b.moe)
      rt::for_each_expert(setup, b.layer, b.moe->first_expert, b.moe->experts,
                          [&](const std::string& n, std::span<float> s) { w.push_back({n, s.size()}); });
  return w;
}

// The layout's slots are the walk, once each, contiguous from 0.
void check_slots(const std::vector<cu::TensorSlot>& slots, const std::vector<Named>& walk, std::size_t total,
                 const std::string& what) {
  bool ok = slots.size() == walk.size();
  std::size_t off = 0;
  std::set<std::string> seen;
  for (std::size_t i = 0; ok && i < slots.size(); ++i) {
    ok = slots[i].name == walk[i].name && slots[i].size == walk[i].size && slots[i].offset == off &&
         seen.insert(slots[i].name).second;
    off += slots[i].size;
  }
  expect(ok && off == total, what + ": name table == the CPU walk (once each, in order, contiguous)");
}

// Every tensor of `a` and `b` (same walk) bit-identical.
bool same_tensors(const rt::ModelSetup& setup, std::vector<rt::BlockParams>& a, std::vector<rt::BlockParams>& b) {
  const cu::StageLayout la(setup, a), lb(setup, b);
  return same_bits(cu::flatten_dense(la, a), cu::flatten_dense(lb, b)) &&
         same_bits(cu::flatten_experts(setup, la, a), cu::flatten_experts(setup, lb, b));
}

void zero_all(const rt::ModelSetup& setup, std::vector<rt::BlockParams>& blocks) {
  const Walk z = [](const std::string&, std::span<float> s) { std::fill(s.begin(), s.end(), 0.0f); };
  for (rt::BlockParams& b : blocks) {
    rt::for_each_dense(b, z);
    if (b.moe) rt::for_each_expert(setup, b.layer, b.moe->first_expert, b.moe->experts, z);
  }
}

void check_stage(const rt::ModelSetup& setup, const std::vector<std::pair<BlockKind, int64_t>>& spec, int member,
                 const std::string& what) {
  cu::Stream stream;
  std::vector<rt::BlockParams> blocks = make_stage(setup, spec, member);
  cu::DeviceStageParams dev(setup, blocks);
  const cu::StageLayout& lay = dev.layout();
  check_slots(lay.dense(), dense_walk(blocks), lay.dense_size(), what + " dense");
  check_slots(lay.experts(), expert_walk(setup, blocks), lay.expert_size(), what + " experts");

  // Download into zeroed copies: the CPU's initial weights, bit for bit.
  std::vector<rt::BlockParams> back = make_stage(setup, spec, member);
  zero_all(setup, back);
  dev.download(back, stream.get());
  expect(same_tensors(setup, blocks, back), what + ": upload → download bit-identical");

  // Each tensor through its own device pointer.
  bool each = true;
  const std::vector<float> hd = cu::flatten_dense(lay, blocks), hx = cu::flatten_experts(setup, lay, blocks);
  for (const cu::TensorSlot& t : lay.dense()) {
    const std::vector<float> want(hd.begin() + static_cast<long>(t.offset), hd.begin() + static_cast<long>(t.offset + t.size));
    each = each && same_bits(to_host(static_cast<const float*>(dev.dense_tensor(t.name)), t.size), want);
  }
  for (const cu::TensorSlot& t : lay.experts()) {
    const std::vector<float> want(hx.begin() + static_cast<long>(t.offset), hx.begin() + static_cast<long>(t.offset + t.size));
    each = each && same_bits(to_host(static_cast<const float*>(dev.expert_tensor(t.name)), t.size), want);
  }
  expect(each, what + ": dense_tensor / expert_tensor(name) point at the tensor");
  bool threw = false;
  try {
    dev.dense_tensor("model.layers.999.no_such.weight");
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, what + ": an unknown name throws std::invalid_argument");

  // Edge bit patterns survive a round trip (-0, a NaN payload, a subnormal).
  const Walk poke = [](const std::string&, std::span<float> s) {
    uint32_t nan = 0x7fa12345u;
    float f;
    std::memcpy(&f, &nan, sizeof f);
    s[0] = -0.0f;
    if (s.size() > 1) s[1] = f;
    if (s.size() > 2) s[2] = 1e-40f;
  };
  for (rt::BlockParams& b : blocks) {
    rt::for_each_dense(b, poke);
    if (b.moe) rt::for_each_expert(setup, b.layer, b.moe->first_expert, b.moe->experts, poke);
  }
  dev.upload(blocks, stream.get());
  zero_all(setup, back);
  dev.download(back, stream.get());
  expect(same_tensors(setup, blocks, back), what + ": -0 / NaN payload / subnormal round trip");

  // Gradients with two sources: round trip, fold, zero.
  constexpr int kSources = 2;
  std::vector<rt::BlockGrads> g, gb;
  for (const rt::BlockParams& b : blocks) {
    g.push_back(rt::make_block_grads(setup, b, kSources));
    gb.push_back(rt::make_block_grads(setup, b, kSources));
  }
  uint64_t seed = 11;
  const Walk fill = [&](const std::string&, std::span<float> s) {
    const std::vector<float> r = random_vector(s.size(), ++seed);
    std::copy(r.begin(), r.end(), s.begin());
  };
  for (rt::BlockGrads& bg : g) {
    rt::for_each_dense(bg.dense, fill);
    for (auto& src : bg.experts_by_src) rt::for_each_expert(setup, bg.dense.layer, bg.dense.moe->first_expert, src, fill);
  }
  cu::DeviceStageGrads dg(lay, kSources);
  dg.upload(setup, g, stream.get());
  dg.download(setup, gb, stream.get());
  auto same_grads = [&](std::vector<rt::BlockGrads>& x, std::vector<rt::BlockGrads>& y, bool src0_only) {
    std::vector<float> a, b;
    const auto into = [](std::vector<float>& v) {
      return Walk([&v](const std::string&, std::span<float> s) { v.insert(v.end(), s.begin(), s.end()); });
    };
    for (std::size_t i = 0; i < x.size(); ++i) {
      rt::for_each_dense(x[i].dense, into(a));
      rt::for_each_dense(y[i].dense, into(b));
      for (std::size_t s = 0; s < x[i].experts_by_src.size() && (!src0_only || s == 0); ++s) {
        rt::for_each_expert(setup, x[i].dense.layer, x[i].dense.moe->first_expert, x[i].experts_by_src[s], into(a));
        rt::for_each_expert(setup, y[i].dense.layer, y[i].dense.moe->first_expert, y[i].experts_by_src[s], into(b));
      }
    }
    return same_bits(a, b);
  };
  expect(same_grads(g, gb, false), what + ": gradients upload → download bit-identical");

  // The CPU's fold (cpu_backend.cpp flatten_experts): acc = src0; acc[k] += src_m[k].
  for (rt::BlockGrads& bg : g)
    for (std::size_t e = 0; e < (bg.experts_by_src.empty() ? 0 : bg.experts_by_src[0].size()); ++e)
      for (int s = 1; s < kSources; ++s) {
        auto& acc = bg.experts_by_src[0][e];
        const auto& one = bg.experts_by_src[idx(s)][e];
        for (Eigen::Index k = 0; k < acc.gate.size(); ++k) acc.gate.data()[k] += one.gate.data()[k];
        for (Eigen::Index k = 0; k < acc.up.size(); ++k) acc.up.data()[k] += one.up.data()[k];
        for (Eigen::Index k = 0; k < acc.down.size(); ++k) acc.down.data()[k] += one.down.data()[k];
      }
  dg.fold_experts(stream.get());
  dg.fold_experts(stream.get());  // idempotent until zero()
  dg.download(setup, gb, stream.get());
  expect(dg.folded() && same_grads(g, gb, true), what + ": fold_experts == the CPU's source-order fold, bit for bit");

  dg.zero(stream.get());
  dg.download(setup, gb, stream.get());
  for (rt::BlockGrads& bg : g) {
    const Walk z = [](const std::string&, std::span<float> s) { std::fill(s.begin(), s.end(), 0.0f); };
    rt::for_each_dense(bg.dense, z);
    for (auto& src : bg.experts_by_src) rt::for_each_expert(setup, bg.dense.layer, bg.dense.moe->first_expert, src, z);
  }
  expect(!dg.folded() && same_grads(g, gb, false), what + ": zero() zeroes every accumulator");
}

}  // namespace

TANDEM_GPU_CHECK(device_params) {
  const ModelCard card = tiny_moe();
  const rt::ModelSetup ep1 = rt::make_setup(card, 1, nn::Numerics::exact, 42);
  const rt::ModelSetup ep2 = rt::make_setup(card, 2, nn::Numerics::exact, 42);
  check_stage(ep1, {{BlockKind::embedding, -1}, {BlockKind::dense_layer, 0}}, 0, "embedding + dense layer 0");
  check_stage(ep2, {{BlockKind::moe_layer, 1}, {BlockKind::moe_layer, 2}}, 1, "MoE layers 1, 2 (EP member 1 of 2)");
  check_stage(ep1, {{BlockKind::head, -1}, {BlockKind::mtp, card.num_hidden_layers}}, 0, "head + MTP");
}

// ================================================================ zero1

namespace {

struct Zero1Case {
  std::string name;
  std::vector<std::vector<int>> dp_groups, expert_dp_groups;  // ranks not in any group sit idle
  int sources = 1;
  bool bf16_moments = false;
};

const std::vector<int>* group_of(const std::vector<std::vector<int>>& groups, int rank) {
  for (const auto& g : groups)
    for (int r : g)
      if (r == rank) return &g;
  return nullptr;
}

void run_zero1_case(cu::VirtualRankWorld& world, const rt::ModelSetup& setup, const Zero1Case& c) {
  constexpr int kSteps = 2;
  const int ranks = world.size();
  std::vector<rt::BlockParams> blocks = make_stage(setup, {{BlockKind::dense_layer, 0}, {BlockKind::moe_layer, 1}}, 0);
  const cu::StageLayout layout(setup, blocks);
  const std::size_t nd = layout.dense_size(), nx = layout.expert_size();
  const std::vector<float> p_dense = cu::flatten_dense(layout, blocks);
  const std::vector<float> p_experts = cu::flatten_experts(setup, layout, blocks);
  nn::AdamWConfig adam;
  adam.lr = 1e-3;
  adam.bf16_moments = c.bf16_moments;

  // grads[t][rank]: the dense gradient and the expert gradient per source.
  struct RankGrads {
    std::vector<float> dense;
    std::vector<std::vector<float>> experts;
  };
  std::vector<std::vector<RankGrads>> grads(kSteps, std::vector<RankGrads>(idx(ranks)));
  uint64_t seed = 1000;
  for (auto& step : grads)
    for (RankGrads& rg : step) {
      rg.dense = random_vector(nd, ++seed);
      for (int s = 0; s < c.sources; ++s) rg.experts.push_back(random_vector(nx, ++seed));
    }

  // The host: per group, the flat sum in group order (experts folded over sources first), then
  // nn::adamw_step over the whole flat buffer (element-wise: the same as shard by shard).
  auto reference = [&](const std::vector<int>& group, bool experts) {
    std::vector<float> p = experts ? p_experts : p_dense;
    std::vector<float> m(p.size(), 0.f), v(p.size(), 0.f);
    for (int t = 0; t < kSteps; ++t) {
      std::vector<float> sum;
      for (std::size_t i = 0; i < group.size(); ++i) {
        const RankGrads& rg = grads[idx(t)][idx(group[i])];
        std::vector<float> mine = experts ? rg.experts[0] : rg.dense;
        if (experts)
          for (std::size_t s = 1; s < rg.experts.size(); ++s)
            for (std::size_t k = 0; k < mine.size(); ++k) mine[k] += rg.experts[s][k];
        if (i == 0) sum = std::move(mine);
        else
          for (std::size_t k = 0; k < sum.size(); ++k) sum[k] += mine[k];
      }
      nn::adamw_step(p, sum, m, v, t + 1, adam);
    }
    return p;
  };

  // Per rank: device state (built here, on the main thread), then the steps on its own thread.
  struct Rank {
    std::unique_ptr<cu::Stream> stream;
    std::unique_ptr<cu::DeviceStageParams> params;
    std::unique_ptr<cu::DeviceStageGrads> grads;
    std::unique_ptr<cu::DeviceZero1> zero;
    std::vector<std::string> failures;
    std::vector<float> dense, experts;  // after the steps
  };
  std::vector<Rank> rk(idx(ranks));
  for (int r = 0; r < ranks; ++r) {
    const auto* dp = group_of(c.dp_groups, r);
    const auto* edp = group_of(c.expert_dp_groups, r);
    if (!dp || !edp) continue;
    Rank& x = rk[idx(r)];
    std::vector<rt::BlockParams> mine = blocks;
    x.stream = std::make_unique<cu::Stream>();
    x.params = std::make_unique<cu::DeviceStageParams>(setup, mine);
    x.grads = std::make_unique<cu::DeviceStageGrads>(x.params->layout(), c.sources);
    x.zero = std::make_unique<cu::DeviceZero1>(world.comm(r), *dp, *edp, 0, x.params->layout(), adam);
    const auto& counts = x.zero->dense_counts();
    std::size_t total = 0;
    bool near_equal = true;
    for (std::size_t i = 0; i < counts.size(); ++i) {
      total += counts[i];
      near_equal = near_equal && counts[i] <= counts[0] && counts[0] - counts[i] <= 1;
    }
    expect(total == nd && near_equal && counts.size() == dp->size(),
           c.name + ": rank " + std::to_string(r) + ": dense shards near-equal, covering the buffer");
  }
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    Rank& x = rk[idx(r)];
    if (!x.zero) continue;
    threads.emplace_back([&, r] {
      Rank& me = rk[idx(r)];
      try {
        cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
        const cudaStream_t s = me.stream->get();
        for (int t = 0; t < kSteps; ++t) {
          const RankGrads& rg = grads[idx(t)][idx(r)];
          me.grads->zero(s);
          if (nd > 0)
            cu::check(cudaMemcpyAsync(me.grads->dense(), rg.dense.data(), nd * sizeof(float), cudaMemcpyHostToDevice, s),
                      "upload dense grads");
          for (int src = 0; src < c.sources; ++src)
            if (nx > 0)
              cu::check(cudaMemcpyAsync(me.grads->experts(src), rg.experts[idx(src)].data(),
                                        nx * sizeof(float), cudaMemcpyHostToDevice, s),
                        "upload expert grads");
          me.zero->step(*me.params, *me.grads, t + 1, s);
        }
        me.stream->sync("zero1 steps");
        me.dense = to_host(static_cast<const float*>(me.params->dense()), nd);
        me.experts = to_host(static_cast<const float*>(me.params->experts()), nx);
      } catch (const std::exception& e) {
        me.failures.push_back(std::string("exception: ") + e.what());
        world.comm(r).abort(e.what());
      }
    });
  }
  for (std::thread& t : threads) t.join();

  for (const auto& g : c.dp_groups) {
    const std::vector<float> want = reference(g, false);
    for (int r : g) {
      const Rank& x = rk[idx(r)];
      for (const std::string& f : x.failures) expect(false, c.name + ": rank " + std::to_string(r) + ": " + f);
      expect(same_bits(x.dense, want), c.name + ": rank " + std::to_string(r) +
                                           ": dense parameters == host reduce → AdamW → gather, bit for bit");
    }
  }
  for (const auto& g : c.expert_dp_groups) {
    const std::vector<float> want = reference(g, true);
    for (int r : g)
      expect(same_bits(rk[idx(r)].experts, want),
             c.name + ": rank " + std::to_string(r) + ": expert parameters == host fold → reduce → AdamW → gather");
  }
  expect(!world.failure().has_value(), c.name + ": the world did not fail");
}

}  // namespace

TANDEM_GPU_CHECK(zero1) {
  expect(cu::zero1_shard_counts(10, 4) == std::vector<std::size_t>({3, 3, 2, 2}) &&
             cu::zero1_shard_offset({3, 3, 2, 2}, 2) == 6 && cu::zero1_shard_counts(2, 3) == std::vector<std::size_t>({1, 1, 0}),
         "shard_counts / offset as zero1_shards.h");
  const rt::ModelSetup setup = rt::make_setup(tiny_moe(), 1, nn::Numerics::exact, 7);
  {
    cu::VirtualRankWorld world(4, 0);
    run_zero1_case(world, setup, {"DP 4", {{0, 1, 2, 3}}, {{0, 1, 2, 3}}, 1, false});
    expect(world.undelivered().empty(), "DP 4: nothing undelivered");
  }
  {
    cu::VirtualRankWorld world(4, 0);
    run_zero1_case(world, setup, {"DP {2,0,1}, expert-DP {1,0} {2}", {{2, 0, 1}}, {{1, 0}, {2}}, 2, true});
    expect(world.undelivered().empty(), "DP 3: nothing undelivered");
  }
}
