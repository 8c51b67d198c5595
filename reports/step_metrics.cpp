#include "reports/step_metrics.h"

#include <algorithm>
#include <cmath>

#include "common/format.h"
#include "common/input_error.h"
#include "common/signed_index.h"
#include "scenarios/memory.h"

namespace tandem {

namespace {

// Idle time (neither stream's compute) is exposed comm up to the comm stream's exposed time, the
// rest bubble: the same split for a rank as for the average GPU.
void close_split(StepSplit& s, double step) {
  const double idle = std::max(0.0, step - s.compute_busy);
  s.exposed_comm = std::min(idle, s.exposed_comm);
  s.bubble = idle - s.exposed_comm;
}

// Adds g's times divided by n (divided, not multiplied by 1/n: the averages keep the digits the
// simulator always printed).
void add_share(StepSplit& to, const GpuTime& g, double n) {
  to.compute_busy += g.compute_busy() / n;
  to.exposed_comm += g.exposed_comm() / n;
  for (int c = 0; c < kSlotClasses; ++c)
    to.compute_by_slot[idx(c)] += g.compute_in(static_cast<SlotClass>(c)) / n;
}

}  // namespace

StepTimes step_times(const std::vector<GpuTime>& gpus, double step_time_s) {
  StepTimes t;
  t.gpus = static_cast<int>(gpus.size());
  t.step_time_s = step_time_s;
  if (t.step_time_s <= 0)
    for (const GpuTime& g : gpus) t.step_time_s = std::max(t.step_time_s, g.end());
  if (gpus.empty()) return t;
  const double n = static_cast<double>(gpus.size());
  int ranks = 0;
  for (const GpuTime& g : gpus) {
    add_share(t.split, g, n);
    for (const auto& [kind, secs] : g.seconds_by_kind()) t.seconds_by_kind[kind] += secs;
    ranks = std::max(ranks, g.rank() + 1);
  }
  for (auto& [kind, secs] : t.seconds_by_kind) secs /= n;
  close_split(t.split, t.step_time_s);

  std::vector<RankTimes> per_rank(idx(ranks));
  for (const GpuTime& g : gpus) {
    RankTimes& r = per_rank[idx(g.rank())];
    r.rank = g.rank();
    add_share(r.split, g, 1.0);
    ++r.gpus;
  }
  for (RankTimes& r : per_rank) {
    if (r.gpus == 0) continue;
    const double k = static_cast<double>(r.gpus);
    r.split.compute_busy /= k;
    r.split.exposed_comm /= k;
    for (double& c : r.split.compute_by_slot) c /= k;
    close_split(r.split, t.step_time_s);
    t.ranks.push_back(r);
  }
  return t;
}

std::vector<GpuTime> account_trace(const Trace& t, const Program& p) {
  std::map<int, GpuTime> per_gpu;
  std::vector<const TraceEvent*> events;
  for (const TraceEvent& e : t.events) events.push_back(&e);
  // Each stream in the order it ran (a trace file lists them by start, per GPU or not).
  std::stable_sort(events.begin(), events.end(), [](const TraceEvent* a, const TraceEvent* b) {
    return std::tie(a->gpu, a->start) < std::tie(b->gpu, b->start);
  });
  for (const TraceEvent* e : events) {
    auto it = per_gpu.try_emplace(e->gpu, e->gpu, e->rank).first;
    it->second.add(e->stream == "compute", e->kind, slot_class(p, e->rank, e->slot), e->start, e->end);
  }
  std::vector<GpuTime> out;
  for (auto& [gpu, g] : per_gpu) {
    g.seal();
    out.push_back(std::move(g));
  }
  return out;
}

StepMetrics step_metrics(const StepTimes& times, const Scenario& s, const Workload& w, const StagePartition& part,
                         double training_tokens) {
  if (!(training_tokens > 0) || !std::isfinite(training_tokens))
    throw_input_error("<command line>", "--tokens", "expected a positive number of training tokens");
  StepMetrics m;
  m.times = times;
  m.gpus = s.gpus;
  const double step = times.step_time_s;
  const double gpus = static_cast<double>(s.gpus);
  m.tokens_per_step = s.tokens_per_step();
  m.tokens_per_s_per_gpu = m.tokens_per_step / step / gpus;
  const double peak = s.cluster.gpu.bf16_tflops * 1e12;
  m.mfu_causal = w.train_flops_per_token(true) * m.tokens_per_step / gpus / step / peak;
  m.mfu_noncausal = w.train_flops_per_token(false) * m.tokens_per_step / gpus / step / peak;
  m.gpu_hours_per_trillion_tokens = gpus * step / 3600.0 / m.tokens_per_step * 1e12;
  m.training_tokens = training_tokens;
  m.days_for_training_tokens = training_tokens / m.tokens_per_step * step / 86400.0;
  m.price_per_gpu_hour = s.cluster.price_per_gpu_hour;
  m.cost_usd_for_training_tokens = m.gpu_hours_per_trillion_tokens * training_tokens / 1e12 * m.price_per_gpu_hour;
  for (const RankMemory& r : memory_per_rank(s, part)) {
    m.memory_per_rank_bytes.push_back(r.total());
    m.memory_parts_per_rank.push_back({r.weights, r.grads, r.optimizer, r.activations});
    m.memory_peak_bytes = std::max(m.memory_peak_bytes, r.total());
  }
  m.hbm_bytes = s.cluster.gpu.hbm_gbytes * 1e9;

  // Routing: how uneven the layers' expert loads are (1.0 = balanced).
  RoutingFigures& rf = m.routing;
  rf.model = to_string(s.routing.model);
  rf.skew = s.routing.skew;
  rf.histogram = s.routing.histogram_file;
  rf.seed = s.routing.seed;
  int moe_layers = 0;
  double mean_gpu = 0;
  for (size_t i = 0; i < w.blocks.size(); ++i) {
    const RoutingPattern& p = w.blocks[i].routing;
    if (p.rows_per_token.empty()) continue;
    rf.max_gpu_load = std::max(rf.max_gpu_load, p.max_load);
    rf.max_expert_load = std::max(rf.max_expert_load, p.max_expert_load);
    mean_gpu += p.max_load;
    ++moe_layers;
    if (rf.member_load_mean.size() < p.load.size()) rf.member_load_mean.resize(p.load.size(), 0.0);
    for (size_t d = 0; d < p.load.size(); ++d) rf.member_load_mean[d] += p.load[d];
    if (rf.busiest_layer < 0 || p.max_load > w.blocks[idx(rf.busiest_layer)].routing.max_load) {
      rf.busiest_layer = static_cast<int>(i);
      rf.member_load_busiest = p.load;
    }
  }
  if (moe_layers > 0) {
    mean_gpu /= moe_layers;
    for (double& l : rf.member_load_mean) l /= moe_layers;
  }
  rf.mean_max_gpu_load = moe_layers > 0 ? mean_gpu : 1.0;
  return m;
}

std::string metrics_text(const StepMetrics& m, bool planning) {
  const StepTimes& t = m.times;
  const double step = t.step_time_s;
  const std::string budget = format_count(m.training_tokens);
  std::string out;
  out += strprintf("  step time                  %12s   (%s tokens)\n", format_seconds(step).c_str(),
                   format_count(m.tokens_per_step).c_str());
  out += strprintf("  tokens/s per GPU           %10.0f\n", m.tokens_per_s_per_gpu);
  if (planning)
    out += strprintf("  MFU (BF16 peak)            %9.1f %%   causal; %.1f %% counting attention non-causally\n",
                     100 * m.mfu_causal, 100 * m.mfu_noncausal);
  out += strprintf("  compute busy               %9.1f %%   of the step, per GPU\n", 100 * t.split.compute_busy / step);
  out += strprintf("  exposed communication      %9.1f %%   (comm stream busy, compute idle)\n", 100 * t.split.exposed_comm / step);
  out += strprintf("  bubble                     %9.1f %%   (both streams idle)\n", 100 * t.split.bubble / step);
  if (!planning) return out;
  out += strprintf("  memory per GPU (peak rank) %10.1f GB of %.0f\n", m.memory_peak_bytes / 1e9, m.hbm_bytes / 1e9);
  out += strprintf("  GPU-hours per 1T tokens    %10.0f\n", m.gpu_hours_per_trillion_tokens);
  out += strprintf("  %-26s %10.1f   on %lld GPUs\n", ("days for " + budget + " tokens").c_str(), m.days_for_training_tokens,
                   static_cast<long long>(m.gpus));
  out += strprintf("  %-26s %10.2f M$ at $%.2f per GPU-hour\n", ("cost for " + budget + " tokens").c_str(),
                   m.cost_usd_for_training_tokens / 1e6, m.price_per_gpu_hour);
  const RoutingFigures& r = m.routing;
  if (r.model == "skewed")
    out += strprintf("  routing                    skewed (skew %.2f, seed %llu): busiest GPU of an EP group %.2fx its share "
                     "(mean over MoE layers %.2fx), busiest expert %.2fx\n",
                     r.skew, static_cast<unsigned long long>(r.seed), r.max_gpu_load, r.mean_max_gpu_load, r.max_expert_load);
  else if (r.model == "measured")
    out += strprintf("  routing                    measured (%s, seed %llu): busiest GPU of an EP group %.2fx its share "
                     "(mean over MoE layers %.2fx), busiest expert %.2fx\n",
                     r.histogram.c_str(), static_cast<unsigned long long>(r.seed), r.max_gpu_load, r.mean_max_gpu_load,
                     r.max_expert_load);
  else
    out += strprintf("  routing                    balanced (seed %llu)\n", static_cast<unsigned long long>(r.seed));
  return out;
}

std::string times_text(const StepTimes& t) {
  const double step = t.step_time_s;
  std::string out = "Where a GPU's time goes by schedule slot (per step, per GPU; adds up to the step)\n";
  for (int c = 0; c < kSlotClasses; ++c) {
    const double v = t.split.compute_by_slot[idx(c)];
    out += strprintf("  %-18s %12s  %5.1f %%\n", (std::string(to_string(static_cast<SlotClass>(c))) + " compute").c_str(),
                     format_seconds(v).c_str(), 100 * v / step);
  }
  out += strprintf("  %-18s %12s  %5.1f %%\n", "exposed comm", format_seconds(t.split.exposed_comm).c_str(),
                   100 * t.split.exposed_comm / step);
  out += strprintf("  %-18s %12s  %5.1f %%\n", "bubble", format_seconds(t.split.bubble).c_str(), 100 * t.split.bubble / step);
  out += "Where a GPU's time goes by task kind (per step, most first; compute and comm streams overlap)\n";
  std::vector<std::pair<double, std::string>> kinds;
  for (const auto& [kind, secs] : t.seconds_by_kind) kinds.push_back({secs, kind});
  std::stable_sort(kinds.begin(), kinds.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const auto& [secs, kind] : kinds)
    out += strprintf("  %-18s %12s  %5.1f %% of the step\n", kind.c_str(), format_seconds(secs).c_str(), 100 * secs / step);
  out += "Compute busy per pipeline rank (per step; * the busiest, which sets the pace)\n ";
  double top = 0;
  for (const RankTimes& r : t.ranks) top = std::max(top, r.split.compute_busy);
  for (size_t k = 0; k < t.ranks.size(); ++k)
    out += strprintf(" %d: %s%s%s", t.ranks[k].rank, format_seconds(t.ranks[k].split.compute_busy).c_str(),
                     t.ranks[k].split.compute_busy == top ? "*" : "", (k + 1) % 8 == 0 && k + 1 < t.ranks.size() ? "\n " : "");
  out += "\n";
  return out;
}

namespace {
nlohmann::json split_json(const StepSplit& s) {
  nlohmann::json j = nlohmann::json::object();
  for (int c = 0; c < kSlotClasses; ++c) j[to_string(static_cast<SlotClass>(c))] = s.compute_by_slot[idx(c)];
  j["exposed_comm"] = s.exposed_comm;
  j["bubble"] = s.bubble;
  return j;
}
}  // namespace

nlohmann::json times_json(const StepTimes& t) {
  nlohmann::json by_kind = nlohmann::json::object();
  for (const auto& [kind, secs] : t.seconds_by_kind) by_kind[kind] = secs;
  nlohmann::json ranks = nlohmann::json::array(), busy = nlohmann::json::array();
  for (const RankTimes& r : t.ranks) {
    ranks.push_back({{"rank", r.rank}, {"gpus", r.gpus}, {"compute_busy_s", r.split.compute_busy},
                     {"seconds_by_slot", split_json(r.split)}});
    busy.push_back(r.split.compute_busy);
  }
  return {{"step_time_s", t.step_time_s},
          {"gpus_accounted", t.gpus},
          {"compute_busy_fraction", t.split.compute_busy / t.step_time_s},
          {"bubble_fraction", t.split.bubble / t.step_time_s},
          {"exposed_comm_fraction", t.split.exposed_comm / t.step_time_s},
          {"seconds_by_slot", split_json(t.split)},
          {"seconds_by_kind", by_kind},
          {"rank_compute_busy_s", busy},
          {"ranks", ranks}};
}

nlohmann::json metrics_json(const StepMetrics& m, bool planning) {
  nlohmann::json j = times_json(m.times);
  j["tokens_per_step"] = m.tokens_per_step;
  j["tokens_per_s_per_gpu"] = m.tokens_per_s_per_gpu;
  if (!planning) return j;
  j["mfu_causal"] = m.mfu_causal;
  j["mfu_noncausal"] = m.mfu_noncausal;
  j["memory_peak_bytes"] = m.memory_peak_bytes;
  j["memory_per_rank_bytes"] = m.memory_per_rank_bytes;
  j["hbm_bytes"] = m.hbm_bytes;
  nlohmann::json parts = nlohmann::json::array();
  for (const auto& p : m.memory_parts_per_rank)
    parts.push_back({{"weights", p.weights}, {"grads", p.grads}, {"optimizer", p.optimizer}, {"activations", p.activations}});
  j["memory_parts_per_rank_bytes"] = parts;
  j["gpu_hours_per_trillion_tokens"] = m.gpu_hours_per_trillion_tokens;
  j["training_tokens"] = m.training_tokens;
  j["days_for_training_tokens"] = m.days_for_training_tokens;
  j["cost_usd_for_training_tokens"] = m.cost_usd_for_training_tokens;
  const RoutingFigures& r = m.routing;
  j["routing"] = {{"model", r.model}, {"skew", r.skew}, {"seed", r.seed}, {"max_gpu_load", r.max_gpu_load},
                  {"mean_max_gpu_load", r.mean_max_gpu_load}, {"max_expert_load", r.max_expert_load},
                  {"member_load_mean", r.member_load_mean}, {"member_load_busiest_layer", r.member_load_busiest},
                  {"busiest_layer", r.busiest_layer}};
  if (r.model == "measured") j["routing"]["histogram"] = r.histogram;
  return j;
}

}  // namespace tandem
