#include "scenarios/memory.h"

#include <algorithm>

#include "common/signed_index.h"

namespace tandem {

std::vector<RankMemory> memory_per_rank(const Scenario& s, const StagePartition& p) {
  const PrecisionRecipe& pr = s.precision;
  const ScheduleTraits& schedule = schedule_traits(s.schedule.kind);
  const int pp = static_cast<int>(s.plan.pp);
  const double copies = static_cast<double>(s.plan.dp * schedule.stage_copies());
  const double ep = static_cast<double>(s.plan.ep);
  const double block = static_cast<double>(pr.weight_block);
  const double opt_bytes = bytes_per_element(pr.master) + 2.0 * bytes_per_element(pr.moments);
  std::vector<RankMemory> out;
  for (int r = 0; r < pp; ++r) {
    RankMemory m;
    m.rank = r;
    for (const StageOnPath& held : schedule.held(pp, r)) m.stages.push_back(held.stage);
    for (int n : schedule.in_flight(pp, r)) m.in_flight.push_back(n);
    for (size_t i = 0; i < m.stages.size(); ++i) {
      const Stage& st = p.stages[idx(m.stages[i])];
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
