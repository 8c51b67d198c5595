#include "exec/backends/cuda/device_backend.h"

#include <algorithm>
#include <stdexcept>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/elementwise.h"
#include "exec/ops/balance/balance.h"
#include "exec/runtime/rank_runner_impl.h"

namespace tandem::cuda {

namespace {

cudaEvent_t timing_event() {
  cudaEvent_t e = nullptr;
  check(cudaEventCreate(&e), "cudaEventCreate (task timing)");
  return e;
}

// Floats of the embedding table [vocab, hidden] (stage 0's first block; the host copy keeps the shape).
std::size_t table_floats(const DeviceBackend::Held& stage0) {
  return idx(stage0.params.front().embed.size());
}

// Comm-stream tasks that also enqueue work on the compute stream after their transfer.
bool has_compute_tail(const Task& t) {
  return t.stream == tandem::Stream::comm && (t.kind == TaskKind::dispatch_f || t.kind == TaskKind::dispatch_b ||
                                               t.kind == TaskKind::combine_f || t.kind == TaskKind::combine_b);
}

// Makes `device` current on this thread, for the members built after it.
unsigned on_device(int device) {
  check(cudaSetDevice(device), "cudaSetDevice");
  return cudaStreamNonBlocking;
}

}  // namespace

DeviceBackend::DeviceBackend(const runtime::RunSpec& spec, int world_rank, const runtime::BlockContext& ctx,
                             DeviceCommunicator& comm)
    : spec_(spec), g_(world_rank), ctx_(ctx), comm_(comm),
      tasks_(spec.program.tasks[idx(spec.pipeline_rank_of(world_rank))]),
      compute_(on_device(comm.device())) {
  if (comm.rank() != world_rank)
    throw std::invalid_argument("DeviceBackend: the communicator is rank " + std::to_string(comm.rank()) +
                                ", not world rank " + std::to_string(world_rank));
  blas_ = std::make_unique<Blas>(compute_.get());
  lt_ = std::make_unique<LtFp8Gemm>();
  linear_ = std::make_unique<DeviceLinear>(*blas_, *lt_, spec.setup.numerics);
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, comm.device()), "cudaGetDeviceProperties");
  const int comm_sms = static_cast<int>(spec.scenario.comm.sms);
  if (comm_sms > 0 && comm_sms < prop.multiProcessorCount) linear_->set_sm_count_target(prop.multiProcessorCount - comm_sms);

  kit_.device = comm.device();
  kit_.compute = compute_.get();
  kit_.comm_stream = comm_stream_.get();
  kit_.blas = blas_.get();
  kit_.lt = lt_.get();
  kit_.linear = linear_.get();
  kit_.comm = &comm_;
  kit_.ep_group = spec.ep_group(world_rank);

  start_.reserve(tasks_.size());
  end_.reserve(tasks_.size());
  for (std::size_t k = 0; k < tasks_.size(); ++k) {
    start_.push_back(timing_event());
    end_.push_back(timing_event());
  }
  ran_.assign(tasks_.size(), 0);
  // dispatch / combine run on the comm stream but end with compute-side work (the unpack, combine's
  // sums and residual add, moe_layer.h): a point on compute after it, for comm-stream successors.
  tail_.assign(tasks_.size(), nullptr);
  tail_ran_.assign(tasks_.size(), 0);
  for (std::size_t k = 0; k < tasks_.size(); ++k)
    if (has_compute_tail(tasks_[k]))
      check(cudaEventCreateWithFlags(&tail_[k], cudaEventDisableTiming), "cudaEventCreateWithFlags (task tail)");
  own_origin_ = timing_event();
  check(cudaEventCreateWithFlags(&handoff_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
}

DeviceBackend::~DeviceBackend() {
  // Queued work may still use the events and buffers: let it finish (errors are reported by the
  // calls that enqueued it, not here).
  cudaSetDevice(comm_.device());
  cudaStreamSynchronize(compute_.get());
  cudaStreamSynchronize(comm_stream_.get());
  for (cudaEvent_t e : start_) cudaEventDestroy(e);
  for (cudaEvent_t e : end_) cudaEventDestroy(e);
  for (cudaEvent_t e : tail_)
    if (e) cudaEventDestroy(e);
  if (own_origin_) cudaEventDestroy(own_origin_);
  if (handoff_) cudaEventDestroy(handoff_);
}

void DeviceBackend::add_stage(Held& st) {
  check(cudaSetDevice(comm_.device()), "cudaSetDevice");
  st.data.blocks = std::make_unique<DeviceStageBlocks>(ctx_, st.params, kit_);
  st.data.zero1 = std::make_unique<DeviceZero1>(comm_, spec_.dp_group(g_), spec_.expert_dp_group(g_), st.stage,
                                                st.data.blocks->params().layout(), spec_.adam);
}

void DeviceBackend::stream_wait(cudaStream_t waiter, cudaStream_t other) {
  check(cudaEventRecord(handoff_, other), "cudaEventRecord (stream hand-off)");
  check(cudaStreamWaitEvent(waiter, handoff_, 0), "cudaStreamWaitEvent (stream hand-off)");
}

void DeviceBackend::start_step() {
  check(cudaSetDevice(comm_.device()), "cudaSetDevice");
  std::lock_guard lock(device_mutex_);
  // Last step's all-gather (comm) lands before this step's compute reads the weights.
  stream_wait(compute_.get(), comm_stream_.get());
  stream_wait(comm_stream_.get(), compute_.get());
  if (origin_) {
    check(cudaStreamWaitEvent(compute_.get(), origin_, 0), "cudaStreamWaitEvent (step origin)");
    check(cudaStreamWaitEvent(comm_stream_.get(), origin_, 0), "cudaStreamWaitEvent (step origin)");
  } else {
    check(cudaEventRecord(own_origin_, compute_.get()), "cudaEventRecord (step origin)");
    check(cudaStreamWaitEvent(comm_stream_.get(), own_origin_, 0), "cudaStreamWaitEvent (step origin)");
  }
  std::fill(ran_.begin(), ran_.end(), 0);
  std::fill(tail_ran_.begin(), tail_ran_.end(), 0);
}

void DeviceBackend::begin_step(Held& st) {
  check(cudaSetDevice(comm_.device()), "cudaSetDevice");
  std::lock_guard lock(device_mutex_);
  st.data.blocks->begin_step();
}

DeviceBackend::Batch DeviceBackend::make_batch(const runtime::MicroBatchData& d) {
  check(cudaSetDevice(comm_.device()), "cudaSetDevice");
  return upload_micro_batch(d);
}

cudaStream_t DeviceBackend::stream_of(const Task& t) const {
  return t.stream == tandem::Stream::comm ? comm_stream_.get() : compute_.get();
}

DeviceBackend::TaskScope::TaskScope(DeviceBackend& be, int index, const Task& t)
    : be_(&be), index_(index), stream_(be.stream_of(t)) {
  check(cudaSetDevice(be.comm_.device()), "cudaSetDevice");
  if (t.kind != TaskKind::pp_send && t.kind != TaskKind::pp_recv) lock_ = std::unique_lock(be.device_mutex_);
  // The Program's cross-stream deps as device order: the deps finished on the host (the
  // interpreter ran them), so their end events are recorded; wait for those on the other stream.
  for (int d : t.deps) {
    const std::size_t k = idx(d);
    const Task& dep = be.tasks_[k];
    if (dep.stream != t.stream && be.ran_[k])
      check(cudaStreamWaitEvent(stream_, be.end_[k], 0), "cudaStreamWaitEvent (task deps)");
    // A comm-stream dep's compute-side tail (e.g. pp_send of the output combine_f wrote on compute).
    // A compute-stream task needs no wait: the tail was enqueued on compute before it.
    if (t.stream == tandem::Stream::comm && be.tail_[k] && be.tail_ran_[k])
      check(cudaStreamWaitEvent(stream_, be.tail_[k], 0), "cudaStreamWaitEvent (task tail)");
  }
  check(cudaEventRecord(be.start_[idx(index)], stream_), "cudaEventRecord (task start)");
}

DeviceBackend::TaskScope::TaskScope(TaskScope&& o) noexcept
    : be_(o.be_), index_(o.index_), stream_(o.stream_), lock_(std::move(o.lock_)) {
  o.be_ = nullptr;
}

DeviceBackend::TaskScope::~TaskScope() {
  if (!be_) return;
  // Recorded even when the task threw: a later wait on it then waits for what was enqueued.
  // Errors here would only repeat the task's own; they are not thrown from a destructor.
  const std::size_t k = idx(index_);
  if (be_->tail_[k] && cudaEventRecord(be_->tail_[k], be_->compute_.get()) == cudaSuccess) be_->tail_ran_[k] = 1;
  if (cudaEventRecord(be_->end_[k], stream_) == cudaSuccess) be_->ran_[k] = 1;
}

void DeviceBackend::attn_f(Held& st, std::size_t i, State& s, const Batch& d) { st.data.blocks->attn_f(i, s, d); }
void DeviceBackend::dispatch_f(Held& st, std::size_t i, State& s, const std::string& label) {
  st.data.blocks->dispatch_f(i, s, label);
}
void DeviceBackend::mlp_f(Held& st, std::size_t i, State& s) { st.data.blocks->mlp_f(i, s); }
void DeviceBackend::combine_f(Held& st, std::size_t i, State& s, const std::string& label) {
  st.data.blocks->combine_f(i, s, label);
}
void DeviceBackend::loss_f(Held& st, std::size_t i, State& s, const Batch& d) { st.data.blocks->loss_f(i, s, d); }
void DeviceBackend::combine_b(Held& st, std::size_t i, State& s, const std::string& label) {
  st.data.blocks->combine_b(i, s, label);
}
void DeviceBackend::mlp_b(Held& st, std::size_t i, State& s) { st.data.blocks->mlp_b(i, s); }
void DeviceBackend::dispatch_b(Held& st, std::size_t i, State& s, const std::string& label) {
  st.data.blocks->dispatch_b(i, s, label);
}
void DeviceBackend::attn_b(Held& st, std::size_t i, State& s) { st.data.blocks->attn_b(i, s); }
void DeviceBackend::mlp_w(Held& st, std::size_t i, State& s) { st.data.blocks->mlp_w(i, s); }
void DeviceBackend::attn_w(Held& st, std::size_t i, State& s, const Batch& d) { st.data.blocks->attn_w(i, s, d); }
void DeviceBackend::release(Held& st, State& s) { st.data.blocks->release(s); }

void DeviceBackend::add_expert_counts(const State& s, std::vector<int64_t>& counts) {
  moe::add_expert_counts(std::span<const int32_t>(s.routing), counts);
}

// pp messages: on the comm stream (the task's), the payload [rows, hidden] FP32.
void DeviceBackend::send(int peer, int tag, const Tensor& x, const std::string& label) {
  comm_.send(peer, tag, x.data(), x.bytes(), label, comm_stream_.get());
}

DeviceBackend::Tensor DeviceBackend::recv(int peer, int tag, int64_t rows, int64_t cols, const std::string& label) {
  Tensor x = DeviceTensor::make(rows, cols);
  comm_.recv(peer, tag, x.data(), x.bytes(), label, comm_stream_.get());
  return x;
}

void DeviceBackend::bias_changed(Held& st, std::size_t b) {
  const auto& bias = st.params[b].moe->bias;
  st.data.blocks->set_router_bias(b, std::span<const float>(bias.data(), idx(bias.size())));
}

float* DeviceBackend::embed_grad(Held& stage0) {
  return stage0.data.blocks->grads().dense_tensor("model.embed_tokens.weight");
}

// The MTP folds run inside the reduce task, on the comm stream, after every weight pass (deps).
void DeviceBackend::add_mtp_lm_head_grad(Held& st, std::size_t mtp, std::size_t head) {
  add_inplace(st.data.blocks->grads().dense_tensor("lm_head.weight"), st.data.blocks->mtp_lm_head_grad(mtp),
              idx(st.params[head].lm_head.size()), comm_stream_.get());
}

void DeviceBackend::add_mtp_embed_grad(Held& st, std::size_t mtp, Held& stage0) {
  add_inplace(embed_grad(stage0), st.data.blocks->mtp_embed_grad(mtp), table_floats(stage0),
              comm_stream_.get());
}

void DeviceBackend::send_mtp_embed_grad(int to, int tag, Held& st, std::size_t mtp, const std::string& label) {
  const std::size_t n = idx(st.params[mtp].mtp_embed.size());
  comm_.send(to, tag, st.data.blocks->mtp_embed_grad(mtp), n * sizeof(float), label, comm_stream_.get());
}

void DeviceBackend::recv_add_embed_grad(int from, int tag, Held& stage0, const std::string& label) {
  const std::size_t n = table_floats(stage0);
  float* tmp = scratch_.reserve(n, comm_stream_.get());
  comm_.recv(from, tag, tmp, n * sizeof(float), label, comm_stream_.get());
  add_inplace(embed_grad(stage0), tmp, n, comm_stream_.get());
}

void DeviceBackend::send_embed_table(int to, int tag, Held& stage0, const std::string& label) {
  const std::size_t n = table_floats(stage0);
  comm_.send(to, tag, stage0.data.blocks->params().dense_tensor("model.embed_tokens.weight"), n * sizeof(float), label,
             comm_stream_.get());
}

void DeviceBackend::copy_embed_table(Held& stage0, Held& st, std::size_t mtp) {
  const std::size_t n = table_floats(stage0);
  check(cudaMemcpyAsync(st.data.blocks->mtp_embed_table(mtp),
                        stage0.data.blocks->params().dense_tensor("model.embed_tokens.weight"), n * sizeof(float),
                        cudaMemcpyDeviceToDevice, comm_stream_.get()),
        "cudaMemcpyAsync (embedding table to the mtp copy)");
}

void DeviceBackend::recv_embed_table(int from, int tag, Held& st, std::size_t mtp, const std::string& label) {
  const std::size_t n = idx(st.params[mtp].mtp_embed.size());
  comm_.recv(from, tag, st.data.blocks->mtp_embed_table(mtp), n * sizeof(float), label, comm_stream_.get());
}

void DeviceBackend::reduce(Held& st, int mirror, int tag) {
  DeviceStageGrads& grads = st.data.blocks->grads();
  const cudaStream_t s = comm_stream_.get();
  grads.fold_experts(s);  // the CPU folds before the copy exchange too
  if (mirror >= 0) {
    const std::string label = "dualpipe copy exchange stage " + std::to_string(st.stage);
    const std::size_t nd = grads.layout().dense_size(), nx = grads.layout().expert_size();
    float* experts = nx > 0 ? grads.experts(0) : nullptr;
    // Both sums are received before either is added (the sends read the unmodified sums). Path 0
    // sends first, path 1 receives first: NCCL's p2p is a rendezvous on the GPU, so two copies
    // that both enqueued their sends ahead of their receives would wait for each other forever.
    float* tmp = scratch_.reserve(std::max<std::size_t>(nd + nx, 1), s);
    auto send_mine = [&] {
      comm_.send(mirror, tag, grads.dense(), nd * sizeof(float), label, s);
      comm_.send(mirror, tag + 1, experts, nx * sizeof(float), label, s);
    };
    auto recv_theirs = [&] {
      comm_.recv(mirror, tag, tmp, nd * sizeof(float), label, s);
      comm_.recv(mirror, tag + 1, nx > 0 ? tmp + nd : nullptr, nx * sizeof(float), label, s);
    };
    if (st.path == 0) {
      send_mine();
      recv_theirs();
    } else {
      recv_theirs();
      send_mine();
    }
    add_inplace(grads.dense(), tmp, nd, s);
    if (nx > 0) add_inplace(experts, tmp + nd, nx, s);
  }
  st.data.zero1->reduce(grads, s);
}

// On the optimizer task's own stream (compute), so its trace event times the AdamW kernels; the
// task scope made compute wait for the reduce-scatter, and the all-gather (comm) waits for this.
void DeviceBackend::optimize(Held& st, int t) {
  st.data.zero1->optimize(st.data.blocks->params(), st.data.blocks->grads(), t, compute_.get());
}

void DeviceBackend::gather(Held& st) { st.data.zero1->gather(st.data.blocks->params(), comm_stream_.get()); }

std::vector<runtime::TaskTiming> DeviceBackend::timings() {
  check(cudaSetDevice(comm_.device()), "cudaSetDevice");
  check(cudaStreamSynchronize(compute_.get()), "cudaStreamSynchronize (step end)");
  check(cudaStreamSynchronize(comm_stream_.get()), "cudaStreamSynchronize (step end)");
  const cudaEvent_t origin = origin_ ? origin_ : own_origin_;
  std::vector<runtime::TaskTiming> out;
  for (std::size_t k = 0; k < tasks_.size(); ++k) {
    if (!ran_[k]) continue;
    float start_ms = 0, end_ms = 0;
    check(cudaEventElapsedTime(&start_ms, origin, start_[k]), "cudaEventElapsedTime (task start)");
    check(cudaEventElapsedTime(&end_ms, origin, end_[k]), "cudaEventElapsedTime (task end)");
    out.push_back({static_cast<int>(k), start_ms * 1e-3, end_ms * 1e-3});
  }
  return out;
}

}  // namespace tandem::cuda

namespace tandem::runtime {
template class RankRunner<cuda::DeviceBackend>;
template RankRunner<cuda::DeviceBackend>::RankRunner(const RunSpec&, int, cuda::DeviceCommunicator&);
}  // namespace tandem::runtime
