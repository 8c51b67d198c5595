#include "exec/runtime/run_spec.h"

#include "common/input_error.h"
#include "common/signed_index.h"
#include "common/splitmix64.h"
#include "exec/runtime/budget.h"
#include "scenarios/plan.h"

namespace tandem::runtime {

std::vector<int> RunSpec::ep_group(int g) const {
  const int p = pipeline_rank_of(g), first = replica_of(g) / ep * ep;
  std::vector<int> group;
  for (int j = 0; j < ep; ++j) group.push_back(world_rank(p, first + j));
  return group;
}

std::vector<int> RunSpec::dp_group(int g) const {
  std::vector<int> group;
  for (int r = 0; r < dp; ++r) group.push_back(world_rank(pipeline_rank_of(g), r));
  return group;
}

std::vector<int> RunSpec::expert_dp_group(int g) const {
  std::vector<int> group;
  for (int r = member_of(replica_of(g)); r < dp; r += ep) group.push_back(world_rank(pipeline_rank_of(g), r));
  return group;
}

RunSpec make_run_spec(const Scenario& s, nn::Numerics numerics, double lr, uint64_t seed) {
  check_supported(s);
  RunSpec spec;
  spec.scenario = s;
  StepPlan plan = make_plan(s);
  spec.workload = std::move(plan.workload);
  spec.partition = plan.partition();
  spec.program = std::move(plan.program);
  spec.pp = static_cast<int>(s.plan.pp);
  spec.dp = static_cast<int>(s.plan.dp);
  spec.ep = static_cast<int>(s.plan.ep);
  spec.setup = make_setup(s.model, spec.ep, numerics, seed);
  spec.micro_batches = static_cast<int>(s.micro_batches());
  spec.seq_len = s.batch.seq_len;
  spec.sequences_per_mb = s.batch.micro_batch_sequences;
  spec.loss_scale = 1.0 / s.tokens_per_step();
  spec.data_seed = seed;
  spec.adam.lr = lr;
  return spec;
}

MicroBatchData synthetic_batch(const RunSpec& spec, int replica, int micro_batch) {
  // splitmix64 of (seed, replica, micro-batch, position): the same ids on every rank and process.
  const uint64_t vocab = static_cast<uint64_t>(spec.setup.card.vocab_size);
  const uint64_t base = splitmix64(splitmix64(splitmix64(spec.data_seed) ^ static_cast<uint64_t>(replica)) ^ static_cast<uint64_t>(micro_batch));
  MicroBatchData d;
  const int64_t L = spec.seq_len;
  for (int64_t q = 0; q < spec.sequences_per_mb; ++q) {
    std::vector<int32_t> seq;
    for (int64_t i = 0; i <= L; ++i)
      seq.push_back(static_cast<int32_t>(splitmix64(base ^ static_cast<uint64_t>(q * (L + 1) + i)) % vocab));
    d.tokens.insert(d.tokens.end(), seq.begin(), seq.end() - 1);
    d.targets.insert(d.targets.end(), seq.begin() + 1, seq.end());
    for (int64_t i = 2; i <= L; ++i) d.mtp_targets.push_back(seq[idx(i)]);
    d.mtp_targets.push_back(-1);  // the last position of a sequence has no t_{i+2}
  }
  return d;
}

BlockContext RunSpec::block_context(const ModelSetup& s, int member) const {
  BlockContext c;
  c.setup = &s;
  c.member = member;
  c.seq_len = seq_len;
  c.loss_scale = loss_scale;
  c.balance_alpha = balance_loss_alpha;
  c.balance_scale = static_cast<double>(seq_len) * loss_scale;  // 1 / sequences of the global batch
  const int64_t depth = s.card.num_nextn_predict_layers;
  c.mtp_loss_scale = depth > 0 ? mtp_lambda / static_cast<double>(depth) * loss_scale : 0.0;
  return c;
}

}  // namespace tandem::runtime
