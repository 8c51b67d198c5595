// DeviceZero1: ZeRO-1 for one held stage on a DeviceCommunicator — the device twin of
// exec/backends/cpu/cpu_rank_runner.cpp's end_of_step_reduce / end_of_step_optimizer / end_of_step_gather:
//
//   reduce()    experts' gradients folded over source members in group order
//               (DeviceStageGrads::fold_experts), then reduce_scatter_sum of the flat dense
//               gradients over the DP group and of the flat expert gradients over the expert-DP
//               group (skipped when the stage has no routed experts, as on the CPU), each member
//               keeping its shard; IN PLACE: the shard lands in the gradient buffer's own block.
//   optimize()  AdamW (cuda::adamw_step, the CPU's hyper-parameters and step count t) on this
//               member's shard of the flat parameter buffers, in place, with the shard's m / v.
//   gather()    all_gather_v of the updated shards back into the full flat parameter buffers (in
//               place: this member's slot is its shard), dense over the DP group, experts over
//               the expert-DP group.
//   step(t)     the three in order.
//
// Shards: near-equal contiguous blocks in group order, the first n % members one float larger —
// exec/runtime/zero1_shards.h's, the CPU backend's too. Moments
// m, v: FP32, one pair per shard (dense and experts), zero at construction (BF16-rounded values
// when AdamWConfig::bf16_moments, as nn::adamw_step keeps them).
//
// Numerics: on VirtualRankWorld bit-identical to the CPU runtime given bit-identical gradients —
// the reduce-scatter adds in group order (virtual_ranks.h), the fold adds sources in group order,
// adamw_step is bit-identical to nn::adamw_step element by element (exec/ops/adamw/adamw_cuda.h), copies are exact.
// On NCCL the reduction order is NCCL's (nccl_comm.h bounds it); the rest is unchanged.
//
// NOT in scope (the CPU runtime does them in end_of_step_reduce / _gather; the caller must, in
// the same place, before reduce() and after gather()): DualPipe's copy exchange (two paths' sums
// added in path order before the reduce-scatter) and the MTP folds (the MTP module's embedding /
// lm_head gradient contributions, the refresh of its embedding copy). Gradient clipping and the
// balance bias update are not here either.
//
// Ordering: everything is enqueued on the `stream` passed (the rank's comm stream); the gradients
// must be complete for work on it (see device_comm.h), the parameters may be read after gather()
// by later work on it. Every member of a group must call reduce / gather for its stages in the
// same order (collectives), as the CPU runtime does, stage by stage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/comm/device_comm.h"
#include "exec/blocks/block_params_cuda.h"
#include "exec/ops/adamw/adamw.h"
#include "exec/runtime/zero1_shards.h"

namespace tandem::cuda {

// The CPU rank runner's shard layout (exec/runtime/zero1_shards.h).
using runtime::zero1_shard_counts;
using runtime::zero1_shard_offset;

class DeviceZero1 {
 public:
  // One held stage `stage` (for the labels) with `layout`, this rank comm.rank() a member of both
  // groups (world ranks; std::invalid_argument naming the group otherwise). Allocates and zeroes
  // the moments (synchronous). The communicator must outlive this object.
  DeviceZero1(DeviceCommunicator& comm, std::vector<int> dp_group, std::vector<int> expert_dp_group, int stage,
              const StageLayout& layout, const nn::AdamWConfig& adam);

  void reduce(DeviceStageGrads& grads, cudaStream_t stream);
  // t = the step count, from 1 (std::invalid_argument otherwise, from adamw_scalars).
  void optimize(DeviceStageParams& params, DeviceStageGrads& grads, int64_t t, cudaStream_t stream);
  void gather(DeviceStageParams& params, cudaStream_t stream);
  void step(DeviceStageParams& params, DeviceStageGrads& grads, int64_t t, cudaStream_t stream);

  const std::vector<std::size_t>& dense_counts() const { return dense_counts_; }
  const std::vector<std::size_t>& expert_counts() const { return expert_counts_; }
  std::size_t dense_offset() const { return dense_offset_; }    // this member's shard, floats
  std::size_t expert_offset() const { return expert_offset_; }
  std::size_t dense_shard() const { return dense_counts_[dense_self_]; }
  std::size_t expert_shard() const { return expert_counts_[expert_self_]; }

 private:
  void check_layout(const StageLayout& layout, const char* what) const;

  DeviceCommunicator& comm_;
  std::vector<int> dp_group_, expert_dp_group_;
  int stage_;
  std::size_t dense_size_, expert_size_;
  nn::AdamWConfig adam_;
  std::size_t dense_self_ = 0, expert_self_ = 0;
  std::vector<std::size_t> dense_counts_, expert_counts_;
  std::size_t dense_offset_ = 0, expert_offset_ = 0;
  DeviceBuffer<float> dense_m_, dense_v_, expert_m_, expert_v_;
};

}  // namespace tandem::cuda
