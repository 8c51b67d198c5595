// One held pipeline stage's parameters and gradients on the device, flattened exactly as the CPU
// runtime flattens them for ZeRO-1 (exec/backends/cpu/cpu_rank_runner.cpp flatten_dense / flatten_experts):
//
//   dense buffer    the replicated tensors of every block of the stage, blocks in stage order,
//                   each block's tensors in runtime::for_each_dense order
//   expert buffer   the local routed experts of every MoE block of the stage, blocks in order,
//                   each block's tensors in runtime::for_each_expert order (experts in order,
//                   gate / up / down each)
//
// Each is ONE contiguous FP32 device allocation, so ZeRO-1 (zero1.h) shards, reduces and gathers
// it with one collective, and the block code gets a device pointer per tensor through the name
// table (StageLayout: Hugging Face names as the walks give them, offsets in floats, row-major as
// the CPU's Mat<float>). Copies are exact: upload then download reproduces BlockParams bit for bit,
// and blocks built from the same seeds (runtime::make_block_params) start with the CPU's weights.
//
// Not flattened (as on the CPU): the router's selection bias (not trained by gradients), an MTP
// block's copy of the embedding table (mtp_embed) and its shared lm_head pointer; BlockGrads'
// mtp_embed / mtp_lm_head contributions (folded by the runtime, not here).
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/blocks/block_params.h"

namespace tandem::cuda {

// One tensor's place in a flat buffer: floats [offset, offset + size).
struct TensorSlot {
  std::string name;
  std::size_t offset = 0;
  std::size_t size = 0;
};

// The flat layout of one stage: every tensor once, in the CPU's flatten order.
class StageLayout {
 public:
  StageLayout() = default;
  // Walks `blocks` (a stage's blocks in order; non-const only because the walks take spans).
  StageLayout(const runtime::ModelSetup& setup, std::vector<runtime::BlockParams>& blocks);

  const std::vector<TensorSlot>& dense() const { return dense_; }
  const std::vector<TensorSlot>& experts() const { return experts_; }
  std::size_t dense_size() const { return dense_size_; }    // floats
  std::size_t expert_size() const { return expert_size_; }  // floats (of one source's buffer)

  // The slot of a tensor by name; std::invalid_argument naming it when the stage has no such tensor.
  const TensorSlot& dense_slot(const std::string& name) const;
  const TensorSlot& expert_slot(const std::string& name) const;

 private:
  std::vector<TensorSlot> dense_, experts_;
  std::unordered_map<std::string, std::size_t> dense_index_, expert_index_;
  std::size_t dense_size_ = 0, expert_size_ = 0;
};

// Host flattening in the layout's order (the same walks; sizes checked against the layout,
// std::invalid_argument on a mismatch). BlockGrads use their `dense` member for the dense walk and
// experts_by_src[src] for the expert walk.
std::vector<float> flatten_dense(const StageLayout& layout, std::vector<runtime::BlockParams>& blocks);
std::vector<float> flatten_experts(const runtime::ModelSetup& setup, const StageLayout& layout,
                                   std::vector<runtime::BlockParams>& blocks);
void unflatten_dense(const StageLayout& layout, std::span<const float> flat, std::vector<runtime::BlockParams>& blocks);
void unflatten_experts(const runtime::ModelSetup& setup, const StageLayout& layout, std::span<const float> flat,
                       std::vector<runtime::BlockParams>& blocks);

// One stage's parameters on the device (FP32 master weights).
class DeviceStageParams {
 public:
  // Builds the layout from `blocks`, allocates and uploads (synchronous: returns when the copies
  // have landed). Throws CudaError.
  DeviceStageParams(const runtime::ModelSetup& setup, std::vector<runtime::BlockParams>& blocks);

  const StageLayout& layout() const { return layout_; }
  float* dense() { return dense_.get(); }      // dense_size() floats (null when 0)
  float* experts() { return experts_.get(); }  // expert_size() floats (null when 0)
  // A tensor's device pointer by name (std::invalid_argument when unknown).
  float* dense_tensor(const std::string& name) { return dense_.get() + layout_.dense_slot(name).offset; }
  float* expert_tensor(const std::string& name) { return experts_.get() + layout_.expert_slot(name).offset; }

  // Host → device / device → host over the same blocks (same shapes; std::invalid_argument if
  // not). Both enqueue on `stream` and synchronise it before returning, so the host data may be
  // reused / read at once; the device buffers must not be in use by other streams meanwhile.
  void upload(std::vector<runtime::BlockParams>& blocks, cudaStream_t stream);
  void download(std::vector<runtime::BlockParams>& blocks, cudaStream_t stream) const;

 private:
  runtime::ModelSetup setup_;  // a copy, for runtime::for_each_expert's signature
  StageLayout layout_;
  DeviceBuffer<float> dense_, experts_;
};

// One stage's gradient accumulators on the device: the dense buffer and one expert buffer per
// SOURCE member of the EP group (BlockGrads::experts_by_src, each in the layout's expert order), so
// each source's rows accumulate separately and the sum is taken in group order at the end.
class DeviceStageGrads {
 public:
  // sources >= 1 (std::invalid_argument otherwise); the buffers start zero (synchronous).
  DeviceStageGrads(const StageLayout& layout, int sources);

  const StageLayout& layout() const { return layout_; }
  int sources() const { return static_cast<int>(experts_.size()); }
  float* dense() { return dense_.get(); }
  float* experts(int src);  // src in [0, sources()) (std::invalid_argument otherwise)
  float* dense_tensor(const std::string& name) { return dense_.get() + layout_.dense_slot(name).offset; }
  float* expert_tensor(int src, const std::string& name) { return experts(src) + layout_.expert_slot(name).offset; }

  // Every accumulator to +0 (cudaMemsetAsync on `stream`), and the fold state cleared.
  void zero(cudaStream_t stream);

  // experts(0) ← ((src0 + src1) + src2) + …: add_inplace per source in group order, one
  // __fadd_rn per element: bit-identical to the CPU's fold (acc = src0; acc[k] += src_m[k]).
  // Idempotent until the next zero() (a second call adds nothing), so the runtime and
  // DeviceZero1::reduce may both call it. With one source: nothing to do.
  void fold_experts(cudaStream_t stream);
  bool folded() const { return folded_; }

  // Host ↔ device over BlockGrads (dense walk of g.dense, expert walk of g.experts_by_src[src] for
  // every src, named by g.dense.layer and g.dense.moe->first_expert; experts_by_src.size() must
  // equal sources() for MoE blocks). Synchronous as above. download() writes experts_by_src[src]
  // from experts(src), i.e. after a fold source 0 holds the sum.
  void upload(const runtime::ModelSetup& setup, std::vector<runtime::BlockGrads>& grads, cudaStream_t stream);
  void download(const runtime::ModelSetup& setup, std::vector<runtime::BlockGrads>& grads, cudaStream_t stream) const;

 private:
  StageLayout layout_;
  DeviceBuffer<float> dense_;
  std::vector<DeviceBuffer<float>> experts_;
  bool folded_ = false;
};

}  // namespace tandem::cuda
