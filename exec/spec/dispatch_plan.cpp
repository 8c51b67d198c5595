#include "exec/spec/dispatch_plan.h"

#include <stdexcept>
#include <string>

#include "common/signed_index.h"

namespace tandem::spec {

DispatchPlan make_dispatch_plan(const EpLayout& layout, int tokens, int top_k, const std::vector<int32_t>& expert) {
  if (tokens < 0 || top_k <= 0 || expert.size() != idx(tokens) * idx(top_k))
    throw std::invalid_argument("make_dispatch_plan: expert must hold tokens * top_k ids");
  DispatchPlan plan;
  plan.ep = layout.ep;
  plan.tokens = tokens;
  plan.top_k = top_k;
  plan.to.assign(idx(layout.ep), {});
  for (int t = 0; t < tokens; ++t)
    for (int k = 0; k < top_k; ++k) {
      const int32_t e = expert[idx(t) * idx(top_k) + idx(k)];
      if (e < 0 || e >= layout.n_routed) throw std::invalid_argument("make_dispatch_plan: expert out of range");
      plan.to[idx(layout.owner(e))].push_back(DispatchRow{t, k, e});
    }
  return plan;
}

SegmentLayout make_segment_layout(const EpLayout& layout, int rank, int align,
                                  const std::vector<std::vector<int32_t>>& ids_from) {
  if (rank < 0 || rank >= layout.ep) throw std::invalid_argument("make_segment_layout: rank out of range");
  if (align <= 0) throw std::invalid_argument("make_segment_layout: align must be positive");
  if (ids_from.size() != idx(layout.ep))
    throw std::invalid_argument("make_segment_layout: one id list per source");
  SegmentLayout p;
  p.ep = layout.ep;
  p.rank = rank;
  p.n_local = layout.experts_per_rank();
  p.first_expert = layout.first_expert(rank);
  p.align = align;
  const auto nl = idx(p.n_local), ep = idx(p.ep);
  p.rows.assign(nl, 0);
  p.from.assign(ep, {});
  p.src_first.assign(nl, std::vector<int64_t>(ep, 0));
  p.src_count.assign(nl, std::vector<int64_t>(ep, 0));
  for (size_t s = 0; s < ep; ++s) {
    const std::vector<int32_t>& ids = ids_from[s];
    std::vector<SegmentLayout::Place>& places = p.from[s];
    places.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const int32_t local = ids[i] - p.first_expert;
      if (local < 0 || local >= p.n_local)
        throw std::invalid_argument("make_segment_layout: a row for an expert member " + std::to_string(rank) +
                                    " does not own");
      const auto l = idx(local);
      if (p.src_count[l][s] == 0) p.src_first[l][s] = p.rows[l];
      ++p.src_count[l][s];
      places[i] = {local, static_cast<int32_t>(p.rows[l]++)};
    }
  }
  p.padded.assign(nl, 0);
  p.offset.assign(nl + 1, 0);
  for (size_t e = 0; e < nl; ++e) {
    p.padded[e] = (p.rows[e] + align - 1) / align * align;
    p.offset[e + 1] = p.offset[e] + p.padded[e];
  }
  return p;
}

}  // namespace tandem::spec
