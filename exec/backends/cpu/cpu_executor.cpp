#include "exec/backends/cpu/cpu_executor.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include "common/signed_index.h"
#include "exec/comm/world.h"
#include "exec/backends/cpu/cpu_backend.h"
#include "exec/runtime/rank_runner.h"
#include "exec/runtime/reference.h"
#include "exec/runtime/step_loop.h"

namespace tandem::runtime {

namespace {

// max |a - b| / max |b| over a shard (0 when both are zero).
double rel_err(std::span<const float> got, std::span<const float> want) {
  double diff = 0, scale = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    diff = std::max(diff, std::abs(static_cast<double>(got[k]) - static_cast<double>(want[k])));
    scale = std::max(scale, std::abs(static_cast<double>(want[k])));
  }
  return diff == 0 ? 0 : diff / std::max(scale, 1e-30);
}

// The largest relative error of this rank's reduced shards against the reference.
double compare_rank(CpuRankRunner& r, const ReferenceStep& ref, const RunSpec& spec) {
  double worst = 0;
  for (HeldStage<CpuBackend>& hs : r.stages()) {
    const CpuBackend::StageData& st = hs.data;
    const auto& d = ref.dense[idx(hs.stage)];
    worst = std::max(worst, rel_err(st.dense_shard_grad,
                                    std::span<const float>(d).subspan(st.dense_offset, st.dense_shard_grad.size())));
    const auto& x = ref.experts[idx(hs.stage)][idx(spec.member_of(r.replica()))];
    if (!st.expert_shard_grad.empty())
      worst = std::max(worst, rel_err(st.expert_shard_grad,
                                      std::span<const float>(x).subspan(st.expert_offset, st.expert_shard_grad.size())));
  }
  return worst;
}

}  // namespace

// "rank G: ..." (the interpreter's and the communicator's messages use world ranks) →
// "world rank G (pipeline rank P, replica R): ...", so a person can find the rank in the Program.
ExecResult execute(const RunSpec& spec, const ExecOptions& o) {
  comm::CommOptions co;
  co.timeout = o.timeout;
  co.fault = o.fault;
  std::unique_ptr<comm::World> world;
  try {
    world = comm::make_world(spec.world_size(), co);
  } catch (const std::exception& e) {
    throw ExecFailure(std::string("cannot start the world: ") + e.what());
  }
  const std::vector<int> local = world->local_ranks();
  ExecResult result;
  result.world = world->describe();
  result.leader = std::find(local.begin(), local.end(), 0) != local.end();
  result.trace.engine = "exec";
  result.trace.program = program_digest(spec.program);
  result.trace.scenario = spec.scenario.name;

  std::optional<ReferenceStep> ref;
  if (o.check_reference) ref = run_reference(spec);

  std::vector<std::unique_ptr<CpuRankRunner>> runners;
  for (int g : local) runners.push_back(std::make_unique<CpuRankRunner>(spec, g, world->comm(g)));
  StepHooks<CpuRankRunner> hooks;
  hooks.grad_error = [&](CpuRankRunner& r, const ReferenceStep& reference) { return compare_rank(r, reference, spec); };
  run_steps(spec, o, runners, *world, ref, hooks, result);
  return result;
}

}  // namespace tandem::runtime
