#include "cli/simulate_command.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/card_reader.h"
#include "common/format.h"
#include "common/read_file.h"
#include "common/signed_index.h"
#include "reports/step_metrics.h"
#include "scenarios/memory.h"
#include "scenarios/scenario.h"
#include "scenarios/stage_partition.h"
#include "sim/compute_cost.h"
#include "sim/engine.h"

namespace tandem {

namespace {
// The JSON's shape: 2 replaced days/cost for 14.8T tokens by `training_tokens` and its figures,
// and added per-rank compute busy time; 3 added `command`, the time by schedule slot
// (`seconds_by_slot`, also per rank in `ranks`), memory per rank against `hbm_bytes`, and the
// routing load per EP member.
constexpr int kSimulateSchemaVersion = 3;
}  // namespace

Result<nlohmann::json> simulate_command(const SimulateOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json {
    if (!(std::isfinite(o.training_tokens) && o.training_tokens > 0 && o.training_tokens <= 1e18))
      throw_input_error("<command line>", "--tokens", "expected a token count in (0, 1e18], got " + format_number(o.training_tokens));
    if (!o.trace.empty())
      if (auto bad = check_writable(o.trace, "--trace")) throw InputException(*bad);
    StagePartition part;  // the balancer's, from the validation
    auto loaded = load_scenario(o.path, o.overrides, &part);
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
      so.fidelity = s.routing.model != RoutingModel::balanced || s.routing.noise > 0 || s.faults.any() ? Fidelity::grouped : Fidelity::replicated;
    else if (o.fidelity == "replicated") so.fidelity = Fidelity::replicated;
    else if (o.fidelity == "grouped") so.fidelity = Fidelity::grouped;
    else if (o.fidelity == "aggregated") so.fidelity = Fidelity::aggregated;
    else if (o.fidelity == "per_pair") so.fidelity = Fidelity::per_pair;
    else throw_input_error("<command line>", "--fidelity", "must be auto, replicated, grouped, aggregated or per_pair, got '" + o.fidelity + "'");
    so.trace = !o.trace.empty();
    so.trace_gpus = o.trace_gpus;
    so.progress = o.progress;
    const Workload w = scenario_workload(s);
    if (!o.calibration.empty()) {  // other costs: balance again
      part = scenario_partition(s, w);
      check_memory_fits(s, part);
    }
    so.partition = &part;
    auto run = simulate(s, so);
    if (!run) throw InputException(run.error());
    const SimResult& r = run.value();
    if (!o.trace.empty() && !r.trace.write_perfetto(o.trace))
      throw_input_error("<command line>", "--trace", "cannot write '" + o.trace + "'");

    const StepMetrics m = step_metrics(step_times(r.gpu_times, r.step_time_s), s, w, part, o.training_tokens);

    t += strprintf("Simulated one step of %s on %lld x %s (%s fidelity, %d GPUs simulated)\n", s.name.c_str(),
                   static_cast<long long>(s.gpus), s.cluster.gpu.name.c_str(), to_string(so.fidelity), r.gpus_simulated);
    t += metrics_text(m, true);
    t += strprintf("  simulation wall time       %10.2f s\n", r.sim_wall_s);
    t += times_text(m.times);
    if (!o.trace.empty())
      t += (so.trace_gpus > 0 ? "trace of GPUs 0-" + std::to_string(so.trace_gpus - 1)
                              : "trace of one GPU per pipeline rank (GPU rank x " + std::to_string(s.plan.dp) + ", its first replica)") +
           ": " + o.trace + "\n";

    // Who waits on whom (every GPU simulated): the GPUs others waited for longest.
    nlohmann::json waits = nlohmann::json::array();
    if (!r.waited_on_a2a_s.empty()) {
      std::vector<int64_t> order(idx(s.gpus));
      for (int64_t g = 0; g < s.gpus; ++g) order[idx(g)] = g;
      auto total = [&](int64_t g) { return r.waited_on_a2a_s[idx(g)] + r.waited_on_pp_s[idx(g)]; };
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return total(a) > total(b); });
      const std::vector<double> speed = s.faults.slow_kernels() ? s.faults.gpu_speed(s.gpus) : std::vector<double>();
      // A GPU's NIC as the faults leave it: "down" (its own, or its plane on a multi-plane
      // fabric, where NIC j of a node is on plane j), "slow", or "" when healthy.
      const NetworkFaults& net = s.faults.network;
      auto listed = [](const std::vector<int>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); };
      auto nic_state = [&](int64_t g) -> std::string {
        const int64_t local = g % s.cluster.gpus_per_node;
        if (listed(net.failed_nics, g) || (s.cluster.fabric.planes > 1 && listed(net.failed_planes, local))) return "down";
        if (net.nic_speed != 1 && listed(net.slow_nics, g)) return "slow";
        return "";
      };
      t += "Who waits on whom: the GPUs others waited for longest (EP-group members at all-to-alls it reached last,\n"
           "the next pipeline rank at receives of its sends), per step\n";
      for (size_t k = 0; k < order.size() && k < 8 && total(order[k]) > 0; ++k) {
        const int64_t g = order[k], rank = g / s.plan.dp, replica = g % s.plan.dp;
        const double sp = speed.empty() ? 1.0 : speed[idx(g)];
        const std::string nic = nic_state(g);
        std::string marks = sp != 1 ? strprintf(" [slow: %.2fx]", sp) : "";
        if (nic == "down") marks += " [NIC down]";
        if (nic == "slow") marks += strprintf(" [NIC at %.2fx]", net.nic_speed);
        t += strprintf("  GPU %5lld (rank %2lld, EP group %3lld, member %2lld)%s: %s at all-to-alls, %s at pipeline receives\n",
                       static_cast<long long>(g), static_cast<long long>(rank), static_cast<long long>(replica / s.plan.ep),
                       static_cast<long long>(replica % s.plan.ep), marks.c_str(),
                       format_seconds(r.waited_on_a2a_s[idx(g)]).c_str(),
                       format_seconds(r.waited_on_pp_s[idx(g)]).c_str());
        waits.push_back({{"gpu", g}, {"rank", rank}, {"ep_group", replica / s.plan.ep}, {"member", replica % s.plan.ep},
                         {"speed", sp}, {"nic", nic.empty() ? "ok" : nic}, {"waited_on_at_all_to_alls_s", r.waited_on_a2a_s[idx(g)]},
                         {"waited_on_at_pipeline_s", r.waited_on_pp_s[idx(g)]}});
      }
    }

    nlohmann::json j{{"command", "simulate"},
                     {"schema_version", kSimulateSchemaVersion},
                     {"tandem_version", TANDEM_VERSION},
                     {"scenario", s.name},
                     {"fidelity", to_string(so.fidelity)},
                     {"gpus", s.gpus},
                     {"gpus_simulated", r.gpus_simulated},
                     {"sim_wall_s", r.sim_wall_s}};
    j.update(metrics_json(m, true));
    if (!waits.empty()) j["waited_on"] = waits;
    return j;
  });
}

}  // namespace tandem
