// RankBackend: what RankRunner<B> (exec/runtime/rank_runner.h) asks of a backend, as a C++20
// concept. Every backend states `static_assert(spec::RankBackend<ItsBackend>)` next to its
// class, so a member missing or of another shape is a compile error in that backend's header —
// the CUDA backend's included, in a build that never runs it.
//
// The meaning of each member is the CPU backend's (exec/backends/cpu/cpu_backend.h): the block
// sub-steps of block i of a held stage, pipeline messages, MTP's shared tensors, ZeRO-1. Calls
// come from the rank's compute and comm threads, ordered by the Program's task dependencies.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tandem {
struct Task;  // scenarios/program.h
}
namespace tandem::comm {
class Communicator;
}
namespace tandem::runtime {
template <class B>
struct HeldStage;
struct MicroBatchData;
}  // namespace tandem::runtime

namespace tandem::spec {

template <class B>
concept RankBackend = requires(B& b, runtime::HeldStage<B>& st, runtime::HeldStage<B>& other, std::size_t i,
                               typename B::State& s, const typename B::State& cs, const typename B::Batch& d,
                               const typename B::Tensor& x, const std::string& label, const Task& task,
                               std::vector<int64_t>& counts, int n, int64_t rows) {
  typename B::Tensor;     // an activation or gradient [rows, cols]
  typename B::State;      // what a block keeps from its forward for its backward
  typename B::Batch;      // a micro-batch's token ids as the sub-steps read them
  typename B::StageData;  // one held stage's gradients and ZeRO-1 state
  typename B::TaskScope;  // held while a task runs

  { B::empty(x) } -> std::same_as<bool>;
  { b.host_comm() } -> std::same_as<comm::Communicator&>;
  b.add_stage(st);
  b.start_step();
  b.begin_step(st);
  { b.make_batch(std::declval<const runtime::MicroBatchData&>()) } -> std::same_as<typename B::Batch>;
  { b.task_scope(n, task) } -> std::same_as<typename B::TaskScope>;

  // The block sub-steps, in the Program's task kinds.
  b.attn_f(st, i, s, d);
  b.dispatch_f(st, i, s, label);
  b.mlp_f(st, i, s);
  b.combine_f(st, i, s, label);
  b.loss_f(st, i, s, d);
  b.combine_b(st, i, s, label);
  b.mlp_b(st, i, s);
  b.dispatch_b(st, i, s, label);
  b.attn_b(st, i, s);
  b.mlp_w(st, i, s);
  b.attn_w(st, i, s, d);
  b.release(st, s);
  b.add_expert_counts(cs, counts);

  // Pipeline messages.
  b.send(n, n, x, label);
  { b.recv(n, n, rows, rows, label) } -> std::same_as<typename B::Tensor>;

  // Balancing and MTP's shared tensors.
  b.bias_changed(st, i);
  b.add_mtp_lm_head_grad(st, i, i);
  b.add_mtp_embed_grad(st, i, other);
  b.send_mtp_embed_grad(n, n, st, i, label);
  b.recv_add_embed_grad(n, n, other, label);
  b.send_embed_table(n, n, other, label);
  b.copy_embed_table(other, st, i);
  b.recv_embed_table(n, n, st, i, label);

  // ZeRO-1.
  b.reduce(st, n, n);
  b.optimize(st, n);
  b.gather(st);
};

}  // namespace tandem::spec
