#include "exec/blocks/block_params_cuda.h"

#include <algorithm>
#include <functional>
#include <stdexcept>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/elementwise.h"

namespace tandem::cuda {

namespace {

using runtime::BlockGrads;
using runtime::BlockParams;
using Walk = std::function<void(const std::string&, std::span<float>)>;

// One MoE block's routed experts as for_each_expert wants them.
struct ExpertSet {
  int64_t layer;
  int first_expert;
  std::vector<nn::FfnWeights<float>>* experts;
};

std::vector<ExpertSet> expert_sets(std::vector<BlockParams>& blocks) {
  std::vector<ExpertSet> sets;
  for (BlockParams& b : blocks)
    if (b.moe) sets.push_back({b.layer, b.moe->first_expert, &b.moe->experts});
  return sets;
}

// Source `src`'s expert accumulators of every MoE block of a stage's gradients.
std::vector<ExpertSet> expert_sets(std::vector<BlockGrads>& grads, std::size_t src, std::size_t sources) {
  std::vector<ExpertSet> sets;
  for (BlockGrads& g : grads) {
    if (!g.dense.moe) continue;
    if (g.experts_by_src.size() != sources)
      throw std::invalid_argument("grads: layer " + std::to_string(g.dense.layer) + " has " +
                                  std::to_string(g.experts_by_src.size()) + " expert sources, the device buffers " +
                                  std::to_string(sources));
    sets.push_back({g.dense.layer, g.dense.moe->first_expert, &g.experts_by_src[src]});
  }
  return sets;
}

void walk_dense(std::vector<BlockParams*> blocks, const Walk& f) {
  for (BlockParams* b : blocks) runtime::for_each_dense(*b, f);
}

void walk_experts(const runtime::ModelSetup& setup, const std::vector<ExpertSet>& sets, const Walk& f) {
  for (const ExpertSet& s : sets) runtime::for_each_expert(setup, s.layer, s.first_expert, *s.experts, f);
}

std::vector<BlockParams*> pointers(std::vector<BlockParams>& blocks) {
  std::vector<BlockParams*> p;
  for (BlockParams& b : blocks) p.push_back(&b);
  return p;
}
std::vector<BlockParams*> pointers(std::vector<BlockGrads>& grads) {
  std::vector<BlockParams*> p;
  for (BlockGrads& g : grads) p.push_back(&g.dense);
  return p;
}

// Visits the walk's tensors against the layout's slots: same count, names and sizes, else
// std::invalid_argument naming `what` and the first difference. fn(slot, span).
template <class Fn>
void match_slots(const std::vector<TensorSlot>& slots, const char* what,
                 const std::function<void(const Walk&)>& walk, Fn&& fn) {
  std::size_t i = 0;
  walk([&](const std::string& name, std::span<float> s) {
    if (i >= slots.size() || slots[i].name != name || slots[i].size != s.size())
      throw std::invalid_argument(std::string(what) + ": tensor " + name + " (" + std::to_string(s.size()) +
                                  " floats) does not match the stage layout" +
                                  (i < slots.size() ? " (expected " + slots[i].name + ", " +
                                                          std::to_string(slots[i].size) + " floats)"
                                                    : " (more tensors than the layout)"));
    fn(slots[i], s);
    ++i;
  });
  if (i != slots.size())
    throw std::invalid_argument(std::string(what) + ": " + std::to_string(i) + " tensors, the stage layout has " +
                                std::to_string(slots.size()));
}

std::vector<float> gather_host(const std::vector<TensorSlot>& slots, std::size_t total, const char* what,
                               const std::function<void(const Walk&)>& walk) {
  std::vector<float> flat(total);
  match_slots(slots, what, walk, [&](const TensorSlot& slot, std::span<float> s) {
    std::copy(s.begin(), s.end(), flat.begin() + static_cast<std::ptrdiff_t>(slot.offset));
  });
  return flat;
}

void scatter_host(const std::vector<TensorSlot>& slots, std::span<const float> flat, std::size_t total,
                  const char* what, const std::function<void(const Walk&)>& walk) {
  if (flat.size() != total)
    throw std::invalid_argument(std::string(what) + ": flat buffer of " + std::to_string(flat.size()) +
                                " floats, the stage layout has " + std::to_string(total));
  match_slots(slots, what, walk, [&](const TensorSlot& slot, std::span<float> s) {
    const auto first = flat.begin() + static_cast<std::ptrdiff_t>(slot.offset);
    std::copy(first, first + static_cast<std::ptrdiff_t>(slot.size), s.begin());
  });
}

void copy_to_device(float* dst, const std::vector<float>& src, cudaStream_t stream) {
  if (src.empty()) return;
  check(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync H2D (stage buffers)");
}
void copy_to_host(std::vector<float>& dst, const float* src, cudaStream_t stream) {
  if (dst.empty()) return;
  check(cudaMemcpyAsync(dst.data(), src, dst.size() * sizeof(float), cudaMemcpyDeviceToHost, stream),
        "cudaMemcpyAsync D2H (stage buffers)");
}

}  // namespace

// ------------------------------------------------------------------------------- StageLayout

StageLayout::StageLayout(const runtime::ModelSetup& setup, std::vector<BlockParams>& blocks) {
  auto add = [](std::vector<TensorSlot>& slots, std::unordered_map<std::string, std::size_t>& index,
                std::size_t& total, const std::string& name, std::size_t n) {
    if (!index.emplace(name, slots.size()).second)
      throw std::invalid_argument("stage layout: tensor " + name + " appears twice");
    slots.push_back({name, total, n});
    total += n;
  };
  walk_dense(pointers(blocks), [&](const std::string& name, std::span<float> s) {
    add(dense_, dense_index_, dense_size_, name, s.size());
  });
  walk_experts(setup, expert_sets(blocks), [&](const std::string& name, std::span<float> s) {
    add(experts_, expert_index_, expert_size_, name, s.size());
  });
}

const TensorSlot& StageLayout::dense_slot(const std::string& name) const {
  const auto it = dense_index_.find(name);
  if (it == dense_index_.end()) throw std::invalid_argument("name: the stage has no replicated tensor " + name);
  return dense_[it->second];
}

const TensorSlot& StageLayout::expert_slot(const std::string& name) const {
  const auto it = expert_index_.find(name);
  if (it == expert_index_.end()) throw std::invalid_argument("name: the stage has no routed-expert tensor " + name);
  return experts_[it->second];
}

// ------------------------------------------------------------------------------- host flattening

std::vector<float> flatten_dense(const StageLayout& layout, std::vector<BlockParams>& blocks) {
  return gather_host(layout.dense(), layout.dense_size(), "blocks (dense)",
                     [&](const Walk& f) { walk_dense(pointers(blocks), f); });
}

std::vector<float> flatten_experts(const runtime::ModelSetup& setup, const StageLayout& layout,
                                   std::vector<BlockParams>& blocks) {
  return gather_host(layout.experts(), layout.expert_size(), "blocks (experts)",
                     [&](const Walk& f) { walk_experts(setup, expert_sets(blocks), f); });
}

void unflatten_dense(const StageLayout& layout, std::span<const float> flat, std::vector<BlockParams>& blocks) {
  scatter_host(layout.dense(), flat, layout.dense_size(), "blocks (dense)",
               [&](const Walk& f) { walk_dense(pointers(blocks), f); });
}

void unflatten_experts(const runtime::ModelSetup& setup, const StageLayout& layout, std::span<const float> flat,
                       std::vector<BlockParams>& blocks) {
  scatter_host(layout.experts(), flat, layout.expert_size(), "blocks (experts)",
               [&](const Walk& f) { walk_experts(setup, expert_sets(blocks), f); });
}

// ------------------------------------------------------------------------------- DeviceStageParams

DeviceStageParams::DeviceStageParams(const runtime::ModelSetup& setup, std::vector<BlockParams>& blocks)
    : setup_(setup), layout_(setup, blocks), dense_(layout_.dense_size()), experts_(layout_.expert_size()) {
  // The legacy default stream: the buffers are new, nothing else uses them yet.
  upload(blocks, nullptr);
}

void DeviceStageParams::upload(std::vector<BlockParams>& blocks, cudaStream_t stream) {
  const std::vector<float> d = flatten_dense(layout_, blocks);
  const std::vector<float> x = flatten_experts(setup_, layout_, blocks);
  copy_to_device(dense_.get(), d, stream);
  copy_to_device(experts_.get(), x, stream);
  // The host vectors die here: wait for the copies (pageable H2D may still read them).
  check(cudaStreamSynchronize(stream), "DeviceStageParams::upload: cudaStreamSynchronize");
}

void DeviceStageParams::download(std::vector<BlockParams>& blocks, cudaStream_t stream) const {
  std::vector<float> d(layout_.dense_size()), x(layout_.expert_size());
  copy_to_host(d, dense_.get(), stream);
  copy_to_host(x, experts_.get(), stream);
  check(cudaStreamSynchronize(stream), "DeviceStageParams::download: cudaStreamSynchronize");
  unflatten_dense(layout_, d, blocks);
  unflatten_experts(setup_, layout_, x, blocks);
}

// ------------------------------------------------------------------------------- DeviceStageGrads

DeviceStageGrads::DeviceStageGrads(const StageLayout& layout, int sources) : layout_(layout) {
  if (sources < 1) throw std::invalid_argument("sources: " + std::to_string(sources) + " (must be >= 1)");
  dense_ = DeviceBuffer<float>(layout_.dense_size());
  for (int s = 0; s < sources; ++s) experts_.emplace_back(layout_.expert_size());
  zero(nullptr);
  check(cudaStreamSynchronize(nullptr), "DeviceStageGrads: cudaStreamSynchronize");
}

float* DeviceStageGrads::experts(int src) {
  if (src < 0 || src >= sources())
    throw std::invalid_argument("src: " + std::to_string(src) + " (sources: " + std::to_string(sources()) + ")");
  return experts_[idx(src)].get();
}

void DeviceStageGrads::zero(cudaStream_t stream) {
  if (dense_.size() > 0) check(cudaMemsetAsync(dense_.get(), 0, dense_.bytes(), stream), "cudaMemsetAsync (dense grads)");
  for (DeviceBuffer<float>& e : experts_)
    if (e.size() > 0) check(cudaMemsetAsync(e.get(), 0, e.bytes(), stream), "cudaMemsetAsync (expert grads)");
  folded_ = false;
}

void DeviceStageGrads::fold_experts(cudaStream_t stream) {
  if (folded_) return;
  for (std::size_t s = 1; s < experts_.size(); ++s)
    add_inplace(experts_[0].get(), experts_[s].get(), layout_.expert_size(), stream);
  folded_ = true;
}

void DeviceStageGrads::upload(const runtime::ModelSetup& setup, std::vector<BlockGrads>& grads, cudaStream_t stream) {
  const std::size_t n = experts_.size();
  const std::vector<float> d = gather_host(layout_.dense(), layout_.dense_size(), "grads (dense)",
                                           [&](const Walk& f) { walk_dense(pointers(grads), f); });
  copy_to_device(dense_.get(), d, stream);
  std::vector<std::vector<float>> x;  // kept alive until the synchronisation below
  for (std::size_t s = 0; s < n; ++s) {
    x.push_back(gather_host(layout_.experts(), layout_.expert_size(), "grads (experts)",
                            [&](const Walk& f) { walk_experts(setup, expert_sets(grads, s, n), f); }));
    copy_to_device(experts_[s].get(), x.back(), stream);
  }
  check(cudaStreamSynchronize(stream), "DeviceStageGrads::upload: cudaStreamSynchronize");
  folded_ = false;
}

void DeviceStageGrads::download(const runtime::ModelSetup& setup, std::vector<BlockGrads>& grads,
                                cudaStream_t stream) const {
  const std::size_t n = experts_.size();
  std::vector<float> d(layout_.dense_size());
  std::vector<std::vector<float>> x(n, std::vector<float>(layout_.expert_size()));
  copy_to_host(d, dense_.get(), stream);
  for (std::size_t s = 0; s < n; ++s) copy_to_host(x[s], experts_[s].get(), stream);
  check(cudaStreamSynchronize(stream), "DeviceStageGrads::download: cudaStreamSynchronize");
  scatter_host(layout_.dense(), d, layout_.dense_size(), "grads (dense)",
               [&](const Walk& f) { walk_dense(pointers(grads), f); });
  for (std::size_t s = 0; s < n; ++s)
    scatter_host(layout_.experts(), x[s], layout_.expert_size(), "grads (experts)",
                 [&](const Walk& f) { walk_experts(setup, expert_sets(grads, s, n), f); });
}

}  // namespace tandem::cuda
