#include "scenarios/memory.h"

#include <algorithm>

namespace tandem {

std::vector<int64_t> stages_of_rank(ScheduleKind kind, int64_t pp, int64_t rank) {
  switch (kind) {
    case ScheduleKind::f1b1:
    case ScheduleKind::zb1p: return {rank};
    case ScheduleKind::dualpipe:
      // Rank r runs stage r of the forward-direction pipeline and stage pp-1-r of the reverse
      // one; its early stage (phase 0) is min of the two.
      return {std::min(rank, pp - 1 - rank), std::max(rank, pp - 1 - rank)};
    case ScheduleKind::dualpipev: return {rank, 2 * pp - 1 - rank};
  }
  return {rank};
}

int64_t stage_copies_per_pipeline(ScheduleKind kind) {
  return kind == ScheduleKind::dualpipe ? 2 : 1;
}

namespace {

std::vector<int64_t> in_flight(ScheduleKind kind, int64_t pp, int64_t rank) {
  switch (kind) {
    case ScheduleKind::f1b1:
    case ScheduleKind::zb1p: return {pp - rank};
    case ScheduleKind::dualpipe: {
      const int64_t h = std::min(rank, pp - 1 - rank);
      return {pp - h, h + 1};
    }
    case ScheduleKind::dualpipev: return {2 * pp - rank, rank + 1};
  }
  return {pp - rank};
}

}  // namespace

std::vector<RankMemory> memory_per_rank(const Scenario& s, const StagePartition& p) {
  const PrecisionRecipe& pr = s.precision;
  const double copies = static_cast<double>(s.plan.dp * stage_copies_per_pipeline(s.schedule.kind));
  const double ep = static_cast<double>(s.plan.ep);
  const double block = static_cast<double>(pr.weight_block);
  const double opt_bytes = bytes_per_element(pr.master) + 2.0 * bytes_per_element(pr.moments);
  std::vector<RankMemory> out;
  for (int64_t r = 0; r < s.plan.pp; ++r) {
    RankMemory m;
    m.rank = r;
    m.stages = stages_of_rank(s.schedule.kind, s.plan.pp, r);
    m.in_flight = in_flight(s.schedule.kind, s.plan.pp, r);
    for (size_t i = 0; i < m.stages.size(); ++i) {
      const Stage& st = p.stages[static_cast<size_t>(m.stages[i])];
      const double routed = static_cast<double>(st.routed_params) / ep;
      const double dense = static_cast<double>(st.params - st.routed_params);
      const double params = routed + dense;
      // The FP8 copy covers the parameters FP8 GEMMs read; routed experts are all among them.
      const double fp8 = pr.fp8 ? routed + static_cast<double>(st.fp8_params - st.routed_params) : 0.0;
      m.params += static_cast<int64_t>(params);
      m.weights += params * bytes_per_element(pr.weights);
      if (pr.fp8) m.weights += fp8 * (1.0 + 4.0 / (block * block));
      m.grads += params * bytes_per_element(pr.grads);
      m.optimizer += dense * opt_bytes / copies + routed * opt_bytes / std::max(1.0, copies / ep);
      m.activations += static_cast<double>(m.in_flight[i]) * st.kept_bytes;
    }
    out.push_back(m);
  }
  return out;
}

}  // namespace tandem
