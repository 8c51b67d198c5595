#include "exec/backends/cuda/zero1.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

#include "common/signed_index.h"
#include "exec/ops/adamw/adamw_cuda.h"

namespace tandem::cuda {

namespace {

std::size_t member_index(const std::vector<int>& group, int rank, const char* name) {
  const auto it = std::find(group.begin(), group.end(), rank);
  if (it == group.end())
    throw std::invalid_argument(std::string(name) + ": rank " + std::to_string(rank) + " is not in " +
                                group_text(group));
  return idx(it - group.begin());
}

std::vector<std::size_t> bytes_of(const std::vector<std::size_t>& counts) {
  std::vector<std::size_t> b;
  b.reserve(counts.size());
  for (std::size_t c : counts) b.push_back(c * sizeof(float));
  return b;
}

DeviceBuffer<float> zeroed(std::size_t n) {
  DeviceBuffer<float> b(n);
  if (n > 0) check(cudaMemset(b.get(), 0, b.bytes()), "cudaMemset (ZeRO-1 moments)");
  // cudaMemset of device memory may return early, and the rank's non-blocking streams are not
  // ordered after the legacy stream: wait here.
  check(cudaStreamSynchronize(nullptr), "cudaStreamSynchronize (ZeRO-1 moments)");
  return b;
}

}  // namespace

DeviceZero1::DeviceZero1(DeviceCommunicator& comm, std::vector<int> dp_group, std::vector<int> expert_dp_group,
                         int stage, const StageLayout& layout, const nn::AdamWConfig& adam)
    : comm_(comm),
      dp_group_(std::move(dp_group)),
      expert_dp_group_(std::move(expert_dp_group)),
      stage_(stage),
      dense_size_(layout.dense_size()),
      expert_size_(layout.expert_size()),
      adam_(adam) {
  dense_self_ = member_index(dp_group_, comm_.rank(), "dp_group");
  expert_self_ = member_index(expert_dp_group_, comm_.rank(), "expert_dp_group");
  dense_counts_ = zero1_shard_counts(dense_size_, dp_group_.size());
  expert_counts_ = zero1_shard_counts(expert_size_, expert_dp_group_.size());
  dense_offset_ = zero1_shard_offset(dense_counts_, dense_self_);
  expert_offset_ = zero1_shard_offset(expert_counts_, expert_self_);
  dense_m_ = zeroed(dense_shard());
  dense_v_ = zeroed(dense_shard());
  expert_m_ = zeroed(expert_shard());
  expert_v_ = zeroed(expert_shard());
}

void DeviceZero1::check_layout(const StageLayout& layout, const char* what) const {
  if (layout.dense_size() != dense_size_ || layout.expert_size() != expert_size_)
    throw std::invalid_argument(std::string(what) + ": stage layout of " + std::to_string(layout.dense_size()) +
                                " + " + std::to_string(layout.expert_size()) + " floats, ZeRO-1 of stage " +
                                std::to_string(stage_) + " was built for " + std::to_string(dense_size_) + " + " +
                                std::to_string(expert_size_));
}

void DeviceZero1::reduce(DeviceStageGrads& grads, cudaStream_t stream) {
  check_layout(grads.layout(), "grads");
  grads.fold_experts(stream);
  const std::string s = std::to_string(stage_);
  // In place: this member's block of the flat gradients receives the group's sum.
  comm_.reduce_scatter_sum(dp_group_, grads.dense(), grads.dense() + dense_offset_, dense_counts_,
                           "dp_reduce_scatter stage " + s, stream);
  if (expert_size_ > 0)
    comm_.reduce_scatter_sum(expert_dp_group_, grads.experts(0), grads.experts(0) + expert_offset_, expert_counts_,
                             "dp_reduce_scatter experts stage " + s, stream);
}

void DeviceZero1::optimize(DeviceStageParams& params, DeviceStageGrads& grads, int64_t t, cudaStream_t stream) {
  check_layout(params.layout(), "params");
  check_layout(grads.layout(), "grads");
  const AdamWScalars sc = adamw_scalars(adam_, t);
  if (dense_shard() > 0)
    adamw_step(params.dense() + dense_offset_, grads.dense() + dense_offset_, dense_m_.get(), dense_v_.get(),
               dense_shard(), sc, stream);
  if (expert_shard() > 0)
    adamw_step(params.experts() + expert_offset_, grads.experts(0) + expert_offset_, expert_m_.get(),
               expert_v_.get(), expert_shard(), sc, stream);
}

void DeviceZero1::gather(DeviceStageParams& params, cudaStream_t stream) {
  check_layout(params.layout(), "params");
  const std::string s = std::to_string(stage_);
  // In place: `in` is this member's own slot of `out`.
  comm_.all_gather_v(dp_group_, params.dense() + dense_offset_, params.dense(), bytes_of(dense_counts_),
                     "dp_all_gather stage " + s, stream);
  if (expert_size_ > 0)
    comm_.all_gather_v(expert_dp_group_, params.experts() + expert_offset_, params.experts(),
                       bytes_of(expert_counts_), "dp_all_gather experts stage " + s, stream);
}

void DeviceZero1::step(DeviceStageParams& params, DeviceStageGrads& grads, int64_t t, cudaStream_t stream) {
  reduce(grads, stream);
  optimize(params, grads, t, stream);
  gather(params, stream);
}

}  // namespace tandem::cuda
