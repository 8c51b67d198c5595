// A measured routing histogram: per MoE layer, the tokens each routed expert received in one
// batch, read from a CSV file so a scenario can replay it (routing.model: measured).
//
// The file: a header line `layer,expert,tokens`, then one row per (MoE layer, routed expert)
// with whole numbers — the layer as the model numbers it (Block::layer: the MTP modules' layers
// follow the main model's), the expert 0..n_routed_experts-1, its token count. Blank lines and
// lines starting with '#' are skipped (a file can say where it came from). Loading is strict,
// against the model the scenario runs: every MoE layer of the model needs a row for every
// routed expert and at least one token; a row for a layer that is not a MoE layer, an expert out
// of range, a count that is not a whole number >= 0, a pair given twice — each is an InputError
// naming the file, the line (or layer) and the reason. Nothing is filled in by default.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/input_error.h"
#include "models/model_card.h"

namespace tandem {

struct RoutingHistogram {
  std::string file;
  int64_t experts = 0;
  std::map<int64_t, std::vector<int64_t>> tokens;  // MoE layer -> tokens per routed expert

  // The layer's counts; nullptr when the file has none for it.
  const std::vector<int64_t>* layer(int64_t l) const {
    auto it = tokens.find(l);
    return it == tokens.end() ? nullptr : &it->second;
  }
};

// Token counts above this are refused: they stay exact in a double, and no measured batch comes
// near (2048 GPUs x 4096 tokens x top-8 is about 2^26 routed rows).
inline constexpr int64_t kMaxHistogramTokens = int64_t{1} << 50;

// Reads and validates `path` (at most kMaxCardBytes, as cards) for model `m`: its MoE layers are
// those m.is_moe_layer() names among the main model's layers and the MTP modules'.
Result<RoutingHistogram> load_routing_histogram(const std::string& path, const ModelCard& m);

// The same, from text (for tests); `source` names it in errors.
Result<RoutingHistogram> parse_routing_histogram(const std::string& text, const std::string& source,
                                                 const ModelCard& m);

}  // namespace tandem
