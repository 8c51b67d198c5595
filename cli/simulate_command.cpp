#include "cli/simulate_command.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/format.h"
#include "scenarios/memory.h"
#include "scenarios/scenario.h"
#include "scenarios/stage_partition.h"
#include "sim/compute_cost.h"
#include "sim/engine.h"

namespace tandem {

namespace {
// The JSON's shape: 2 replaced days/cost for 14.8T tokens by `training_tokens` and its figures,
// and added per-rank compute busy time.
constexpr int kSimulateSchemaVersion = 2;
}  // namespace

Result<nlohmann::json> simulate_command(const SimulateOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json {
    auto loaded = load_scenario(o.path, o.overrides);
    if (!loaded) throw InputException(loaded.error());
    // --calibration files join the scenario's own, so the stage balancer and the engine weigh
    // with the same costs (and the busiest GPU is checked again under the partition they give).
    Scenario s = loaded.value();
    for (const std::string& f : o.calibration) {
      auto c = load_calibration(f);
      if (!c) throw InputException(c.error());
      if (!c.value().overlay) s.calibration.clear();  // a complete file replaces the scenario's
      s.calibration.push_back(f);
    }
    SimOptions so;
    // auto: the fastest tier that is exact for the scenario's routing.
    if (o.fidelity == "auto")
      so.fidelity = s.routing.model == RoutingModel::skewed ? Fidelity::grouped : Fidelity::replicated;
    else if (o.fidelity == "replicated") so.fidelity = Fidelity::replicated;
    else if (o.fidelity == "grouped") so.fidelity = Fidelity::grouped;
    else if (o.fidelity == "aggregated") so.fidelity = Fidelity::aggregated;
    else if (o.fidelity == "per_pair") so.fidelity = Fidelity::per_pair;
    else throw_input_error("<command line>", "--fidelity", "must be auto, replicated, grouped, aggregated or per_pair, got '" + o.fidelity + "'");
    so.trace = !o.trace.empty();
    so.trace_gpus = o.trace_gpus;
    so.progress = o.progress;
    const Workload w = scenario_workload(s);
    const StagePartition part = scenario_partition(s, w);
    if (!o.calibration.empty()) check_memory_fits(s, part);
    auto run = simulate(s, so);
    if (!run) throw InputException(run.error());
    const SimResult& r = run.value();
    if (!o.trace.empty() && !r.trace.write_perfetto(o.trace))
      throw_input_error("<command line>", "--trace", "cannot write '" + o.trace + "'");

    double peak_mem = 0;
    for (const RankMemory& m : memory_per_rank(s, part)) peak_mem = std::max(peak_mem, m.total());
    const double step = r.step_time_s;
    const double gpus = static_cast<double>(s.gpus);
    const double tokens = s.tokens_per_step();
    const double peak = s.cluster.gpu.bf16_tflops * 1e12;
    const double noncausal_flops = w.train_flops_per_token(false) * tokens / gpus;
    const double mfu = r.model_flops_per_gpu / step / peak;
    const double mfu_nc = noncausal_flops / step / peak;
    const double idle = std::max(0.0, step - r.compute_busy_s);
    const double exposed = std::min(idle, r.exposed_comm_s);
    const double bubble = idle - exposed;
    const double gpu_hours_per_t = gpus * step / 3600.0 / tokens * 1e12;
    if (!(o.training_tokens > 0) || !std::isfinite(o.training_tokens))
      throw_input_error("<command line>", "--tokens", "expected a positive number of training tokens");
    const double days = o.training_tokens / tokens * step / 86400.0;
    const double cost = gpu_hours_per_t * o.training_tokens / 1e12 * s.cluster.price_per_gpu_hour;
    const std::string budget = format_count(o.training_tokens);

    t += strprintf("Simulated one step of %s on %lld x %s (%s fidelity, %d GPUs simulated)\n", s.name.c_str(),
                   static_cast<long long>(s.gpus), s.cluster.gpu.name.c_str(), to_string(so.fidelity), r.gpus_simulated);
    t += strprintf("  step time                  %12s   (%s tokens)\n", format_seconds(step).c_str(), format_count(tokens).c_str());
    t += strprintf("  tokens/s per GPU           %10.0f\n", tokens / step / gpus);
    t += strprintf("  MFU (BF16 peak)            %9.1f %%   causal; %.1f %% counting attention non-causally\n", 100 * mfu, 100 * mfu_nc);
    t += strprintf("  compute busy               %9.1f %%   of the step, per GPU\n", 100 * r.compute_busy_s / step);
    t += strprintf("  exposed communication      %9.1f %%   (comm stream busy, compute idle)\n", 100 * exposed / step);
    t += strprintf("  bubble                     %9.1f %%   (both streams idle)\n", 100 * bubble / step);
    t += strprintf("  memory per GPU (peak rank) %10.1f GB of %.0f\n", peak_mem / 1e9, s.cluster.gpu.hbm_gbytes);
    t += strprintf("  GPU-hours per 1T tokens    %10.0f\n", gpu_hours_per_t);
    t += strprintf("  %-26s %10.1f   on %lld GPUs\n", ("days for " + budget + " tokens").c_str(), days, static_cast<long long>(s.gpus));
    t += strprintf("  %-26s %10.2f M$ at $%.2f per GPU-hour\n", ("cost for " + budget + " tokens").c_str(), cost / 1e6,
                   s.cluster.price_per_gpu_hour);
    // Routing: how uneven the layers' expert loads are (1.0 = balanced).
    double busiest_gpu = 1, busiest_expert = 1, mean_gpu = 0;
    int moe_layers = 0;
    for (const Block& b : w.blocks) {
      if (b.routing.rows_per_token.empty()) continue;
      busiest_gpu = std::max(busiest_gpu, b.routing.max_load);
      busiest_expert = std::max(busiest_expert, b.routing.max_expert_load);
      mean_gpu += b.routing.max_load;
      ++moe_layers;
    }
    if (moe_layers > 0) mean_gpu /= moe_layers;
    if (s.routing.model == RoutingModel::skewed)
      t += strprintf("  routing                    skewed (skew %.2f, seed %llu): busiest GPU of an EP group %.2fx its share "
                     "(mean over MoE layers %.2fx), busiest expert %.2fx\n",
                     s.routing.skew, static_cast<unsigned long long>(s.routing.seed), busiest_gpu, mean_gpu, busiest_expert);
    else
      t += strprintf("  routing                    balanced (seed %llu)\n", static_cast<unsigned long long>(s.routing.seed));
    t += strprintf("  simulation wall time       %10.2f s\n", r.sim_wall_s);
    t += "Where a GPU's time goes (per step, per task kind, most first; compute and comm streams overlap)\n";
    nlohmann::json by_kind;
    std::vector<std::pair<double, std::string>> kinds;
    for (const auto& [kind, secs] : r.seconds_by_kind) {
      kinds.push_back({secs, kind});
      by_kind[kind] = secs;
    }
    std::stable_sort(kinds.begin(), kinds.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (const auto& [secs, kind] : kinds)
      t += strprintf("  %-18s %12s  %5.1f %% of the step\n", kind.c_str(), format_seconds(secs).c_str(), 100 * secs / step);
    // Per pipeline rank: how busy its compute stream is (the stage balancer's concern).
    t += "Compute busy per pipeline rank (per step; * the busiest, which sets the pace)\n ";
    const double top = r.rank_compute_busy_s.empty() ? 0 : *std::max_element(r.rank_compute_busy_s.begin(), r.rank_compute_busy_s.end());
    for (size_t k = 0; k < r.rank_compute_busy_s.size(); ++k)
      t += strprintf(" %zu: %s%s%s", k, format_seconds(r.rank_compute_busy_s[k]).c_str(), r.rank_compute_busy_s[k] == top ? "*" : "",
                     (k + 1) % 8 == 0 && k + 1 < r.rank_compute_busy_s.size() ? "\n " : "");
    t += "\n";
    if (!o.trace.empty())
      t += (so.trace_gpus > 0 ? "trace of GPUs 0-" + std::to_string(so.trace_gpus - 1)
                              : "trace of one GPU per pipeline rank (GPU rank x " + std::to_string(s.plan.dp) + ", its first replica)") +
           ": " + o.trace + "\n";

    return nlohmann::json{{"schema_version", kSimulateSchemaVersion},
                          {"tandem_version", TANDEM_VERSION},
                          {"scenario", s.name},
                          {"fidelity", to_string(so.fidelity)},
                          {"gpus", s.gpus},
                          {"step_time_s", step},
                          {"tokens_per_step", tokens},
                          {"tokens_per_s_per_gpu", tokens / step / gpus},
                          {"mfu_causal", mfu},
                          {"mfu_noncausal", mfu_nc},
                          {"compute_busy_fraction", r.compute_busy_s / step},
                          {"bubble_fraction", bubble / step},
                          {"exposed_comm_fraction", exposed / step},
                          {"memory_peak_bytes", peak_mem},
                          {"gpu_hours_per_trillion_tokens", gpu_hours_per_t},
                          {"training_tokens", o.training_tokens},
                          {"days_for_training_tokens", days},
                          {"cost_usd_for_training_tokens", cost},
                          {"seconds_by_kind", by_kind},
                          {"rank_compute_busy_s", r.rank_compute_busy_s},
                          {"routing", {{"model", to_string(s.routing.model)}, {"skew", s.routing.skew},
                                       {"seed", s.routing.seed}, {"max_gpu_load", busiest_gpu},
                                       {"mean_max_gpu_load", mean_gpu}, {"max_expert_load", busiest_expert}}},
                          {"gpus_simulated", r.gpus_simulated},
                          {"sim_wall_s", r.sim_wall_s}};
  });
}

}  // namespace tandem
