// The MoE layer's index plans — which (token, slot) rows go to which EP member, and where the rows
// an expert member receives land in its 128-padded expert segments. One implementation for every
// backend: the CPU reference packs its buffers from them (exec/ops/moe_layer/dispatch_plan.h says how the
// rows travel and why the order makes EP runs bit-identical to one rank), the CUDA layer builds its
// device index arrays from them (exec/ops/moe_layer/moe_layer_cuda.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/signed_index.h"
#include "exec/spec/moe_config.h"

namespace tandem::spec {

struct DispatchRow {
  int32_t token = 0, slot = 0, expert = 0;  // slot k in [0, K); expert global
};

// Token side: to[d] = the (token, slot) rows whose expert lives on member d, in (token, slot) order.
struct DispatchPlan {
  int ep = 1, tokens = 0, top_k = 0;
  std::vector<std::vector<DispatchRow>> to;
  int64_t rows_to(int d) const { return static_cast<int64_t>(to[idx(d)].size()); }
};

// expert: [tokens · top_k] global ids in slot order (token t's slot k at t·top_k + k).
// std::invalid_argument on a size mismatch or an id outside [0, n_routed).
DispatchPlan make_dispatch_plan(const EpLayout& layout, int tokens, int top_k, const std::vector<int32_t>& expert);

// Expert side: member `rank`'s segments. Rows from every source are placed per local expert in
// (source, token, slot) order; each segment is padded to a multiple of align (0 stays 0).
struct SegmentLayout {
  struct Place {
    int32_t expert = 0;  // local expert index
    int32_t row = 0;     // row within that expert's segment
  };
  int ep = 1, rank = 0, first_expert = 0, n_local = 0, align = kSegmentAlign, cols = 0;
  std::vector<int64_t> rows;    // [n_local] real rows of each local expert
  std::vector<int64_t> padded;  // [n_local] rows rounded up to a multiple of align
  std::vector<int64_t> offset;  // [n_local + 1] segment starts in the contiguous layout
  std::vector<std::vector<Place>> from;  // from[s][i]: the i-th row received from member s
  // Source s's rows of local expert e: segment rows [src_first[e][s], + src_count[e][s]).
  std::vector<std::vector<int64_t>> src_first, src_count;

  int64_t total_rows() const { return offset.empty() ? 0 : offset.back(); }
};

// ids_from[s]: the global expert ids member s sent to `rank`, in its order (cols stays 0: the
// caller knows the width). std::invalid_argument on a bad rank or align, a list per source
// missing, or a row for an expert `rank` does not own.
SegmentLayout make_segment_layout(const EpLayout& layout, int rank, int align,
                                  const std::vector<std::vector<int32_t>>& ids_from);

}  // namespace tandem::spec
