#include "scenarios/stage_partition.h"

#include <algorithm>
#include <numeric>

#include "common/format.h"
#include "common/signed_index.h"

namespace tandem {

namespace {

// A unit is what a cut cannot split: [embedding + layer 0], each further layer, [head + MTP].
struct Unit {
  size_t first = 0, end = 0;
  int64_t layers = 0;
  double cost = 0;  // the balancer's weight (load)
};

std::vector<Unit> make_units(const Workload& w, const std::vector<double>& block_load) {
  std::vector<Unit> units;
  const auto& b = w.blocks;
  size_t i = 0;
  while (i < b.size()) {
    Unit u;
    u.first = i;
    if (b[i].kind == BlockKind::embedding) {
      ++i;  // the embedding rides with the first layer
    }
    if (i < b.size() && (b[i].kind == BlockKind::dense_layer || b[i].kind == BlockKind::moe_layer)) {
      ++i;
      u.layers = 1;
    } else {
      while (i < b.size()) ++i;  // head and MTP modules: one tail unit
    }
    u.end = i;
    for (size_t j = u.first; j < u.end; ++j) u.cost += block_load[j];
    units.push_back(u);
  }
  return units;
}

Stage make_stage(const Workload& w, const std::vector<double>& block_load, size_t first, size_t end) {
  Stage s;
  s.first_block = first;
  s.end_block = end;
  for (size_t j = first; j < end; ++j) {
    const Block& b = w.blocks[j];
    s.layers += (b.kind == BlockKind::dense_layer || b.kind == BlockKind::moe_layer) ? 1 : 0;
    s.cost += b.model_flops();
    s.load += block_load[j];
    s.kept_bytes += b.kept_bytes();
    s.params += b.params();
    s.routed_params += b.routed_params();
    for (const auto& op : b.ops) s.fp8_params += op.fp8_params ? op.params : 0;
  }
  return s;
}

// Fewest groups of consecutive units with cost <= limit each (or huge if a unit exceeds it).
size_t groups_needed(const std::vector<Unit>& u, double limit) {
  size_t groups = 0;
  double acc = 0;
  for (const auto& x : u) {
    if (x.cost > limit) return SIZE_MAX;
    if (groups == 0 || acc + x.cost > limit) {
      ++groups;
      acc = 0;
    }
    acc += x.cost;
  }
  return groups;
}

}  // namespace

int64_t max_stages(const ModelCard& m) { return m.num_hidden_layers + 1; }

StagePartition partition_stages(const Workload& w, int64_t stages,
                                const std::vector<int64_t>& manual_layers,
                                const std::string& file, const std::string& key,
                                const StageLayoutOptions& o) {
  std::vector<double> block_load = o.block_seconds;
  if (block_load.size() != w.blocks.size()) {
    block_load.clear();
    for (const Block& b : w.blocks) block_load.push_back(b.model_flops());
  }
  const std::vector<Unit> units = make_units(w, block_load);
  const size_t S = idx(stages);
  const int64_t L = w.model.num_hidden_layers;
  if (stages < 1 || S > units.size())
    throw_input_error(file, key,
                      "cannot cut " + std::to_string(L) + " layers (+ head" +
                          (w.model.num_nextn_predict_layers ? std::string(" and MTP") : "") +
                          ") into " + std::to_string(stages) + " pipeline stages (at most " +
                          std::to_string(units.size()) + ")");
  StagePartition p;
  p.mirrored = o.mirrored && S % 2 == 0;
  p.load_in_seconds = o.block_seconds.size() == w.blocks.size();
  std::vector<size_t> cut;  // unit index where each stage starts
  if (!manual_layers.empty()) {
    const std::string mkey = "schedule.stage_layers";
    if (manual_layers.size() != S)
      throw_input_error(file, mkey, "gives " + std::to_string(manual_layers.size()) +
                                        " stages, the plan has " + std::to_string(stages));
    int64_t sum = 0;
    for (size_t i = 0; i < S; ++i) {
      if (manual_layers[i] < (i + 1 == S ? 0 : 1))
        throw_input_error(file, mkey + "[" + std::to_string(i) + "]",
                          "every stage but the last needs at least one layer");
      sum += manual_layers[i];
    }
    if (sum != L)
      throw_input_error(file, mkey, "sums to " + std::to_string(sum) + " layers, the model has " +
                                        std::to_string(L));
    size_t u = 0;
    for (size_t i = 0; i < S; ++i) {
      cut.push_back(u);
      u += idx(manual_layers[i]);
    }
  } else {
    // Smallest feasible max-stage cost by bisection, then a greedy cut that leaves exactly
    // one unit per remaining stage when units run short.
    double lo = 0, hi = 0;
    for (const auto& x : units) {
      lo = std::max(lo, x.cost);
      hi += x.cost;
    }
    for (int it = 0; it < 100 && hi - lo > 1e-9 * hi; ++it) {
      const double mid = 0.5 * (lo + hi);
      (groups_needed(units, mid) <= S ? hi : lo) = mid;
    }
    double acc = 0;
    for (size_t u = 0; u < units.size(); ++u) {
      const size_t stages_left = S - cut.size();
      const size_t units_left = units.size() - u;
      if (cut.empty() || (cut.size() < S && (acc + units[u].cost > hi || units_left == stages_left))) {
        cut.push_back(u);
        acc = 0;
      }
      acc += units[u].cost;
    }
  }
  for (size_t i = 0; i < S; ++i) {
    const size_t u0 = cut[i];
    const size_t u1 = i + 1 < S ? cut[i + 1] : units.size();
    p.stages.push_back(make_stage(w, block_load, units[u0].first, units[u1 - 1].end));
  }
  return p;
}

std::vector<double> StagePartition::rank_loads() const {
  std::vector<double> loads;
  const size_t S = stages.size();
  if (!mirrored) {
    for (const Stage& s : stages) loads.push_back(s.load);
    return loads;
  }
  for (size_t r = 0; r < S / 2; ++r) loads.push_back(stages[r].load + stages[S - 1 - r].load);
  return loads;
}

std::string StagePartition::describe_ranks() const {
  const std::vector<double> loads = rank_loads();
  double mean = 0, top = 0;
  for (double l : loads) {
    mean += l / static_cast<double>(loads.size());
    top = std::max(top, l);
  }
  std::string out;
  const size_t S = stages.size();
  for (size_t r = 0; r < loads.size(); ++r) {
    const std::string held = mirrored ? strprintf("stages %zu+%zu", r, S - 1 - r) : strprintf("stage %zu", r);
    const std::string value = load_in_seconds ? strprintf("%8.2f ms", loads[r] * 1e3) : strprintf("%8.2f TFLOP", loads[r] / 1e12);
    out += strprintf("  %-14s %s per micro-batch  %5.1f%% of the mean%s\n", held.c_str(), value.c_str(),
                     100 * loads[r] / mean, loads[r] == top ? "  (busiest)" : "");
  }
  return out;
}

std::string StagePartition::describe(const Workload& w) const {
  std::string out;
  for (size_t i = 0; i < stages.size(); ++i) {
    const Stage& s = stages[i];
    std::string names;
    for (size_t j = s.first_block; j < s.end_block; ++j) {
      const Block& b = w.blocks[j];
      const bool layer = b.kind == BlockKind::dense_layer || b.kind == BlockKind::moe_layer;
      const bool next_layer = j + 1 < s.end_block &&
                              (w.blocks[j + 1].kind == BlockKind::dense_layer ||
                               w.blocks[j + 1].kind == BlockKind::moe_layer);
      if (layer && j > s.first_block && (w.blocks[j - 1].kind == BlockKind::dense_layer ||
                                         w.blocks[j - 1].kind == BlockKind::moe_layer)) {
        if (!next_layer) names += "-" + std::to_string(b.layer);
        continue;
      }
      if (!names.empty()) names += " ";
      names += layer ? "layer." + std::to_string(b.layer) : b.name;
    }
    out += strprintf("  stage %2zu: %-28s %6.2f TFLOP/micro-batch  %6.2f GB kept", i, names.c_str(),
                     s.cost / 1e12, s.kept_bytes / 1e9);
    if (load_in_seconds) out += strprintf("  %7.2f ms compute", s.load * 1e3);
    out += "\n";
  }
  return out;
}

}  // namespace tandem
