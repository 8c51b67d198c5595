#include "cli/calibrate_command.h"

#include <fstream>

#include "common/chrome_trace.h"
#include "scenarios/scenario.h"
#include "sim/calibrate.h"
#include "sim/compute_cost.h"
#include "sim/kernel_rules.h"
#include "common/write_file.h"

namespace tandem {

Result<nlohmann::json> calibrate_command(const CalibrateOptions& o, std::string& text) {
  return catch_input_errors([&]() -> nlohmann::json {
    auto loaded = load_scenario(o.scenario, o.overrides);
    if (!loaded) throw InputException(loaded.error());
    const Scenario& s = loaded.value();
    auto rules = o.rules.empty() ? Result<KernelRules>(default_kernel_rules()) : load_kernel_rules(o.rules);
    if (!rules) throw InputException(rules.error());
    std::vector<ChromeTrace> traces;
    for (const std::string& path : o.traces) {
      auto t = read_chrome_trace(path);
      if (!t) throw InputException(t.error());
      traces.push_back(std::move(t.value()));
    }
    auto base = base_calibration(s);
    if (!base) throw InputException(base.error());
    auto derived = derive_calibration(s, base.value(), traces, rules.value());
    if (!derived) throw InputException(derived.error());
    CalibrationDerivation& d = derived.value();
    if (!o.name.empty()) d.result.name = o.name;
    d.result.provenance.insert(d.result.provenance.begin(), o.source.begin(), o.source.end());
    text += d.text();
    if (!o.out.empty()) {
      std::string why;
      if (!write_file(o.out,
                      "# Written by `tandem calibrate`: a calibration overlay (sim/compute_cost.h) derived from measured\n"
                      "# kernels; lay it over a complete calibration (a scenario's `calibration:` list or --calibration).\n" +
                          d.yaml(),
                      &why))
        throw_input_error("<command line>", "--out", "cannot write '" + o.out + "': " + why);
      text += "wrote " + o.out + "\n";
    }
    nlohmann::json kinds = nlohmann::json::object();
    for (const KindFigure& k : d.kinds)
      kinds[k.kind] = {{"instances", k.instances}, {"kernels", k.kernels}, {"measured_us", k.measured_us},
                       {"span_us", k.span_us}, {"charged_us", k.busy_us}, {"model_before_us", k.model_before_us}, {"model_after_us", k.model_after_us}};
    nlohmann::json unclassified = nlohmann::json::array();
    for (const auto& u : d.unclassified) unclassified.push_back({{"name", u.name}, {"count", u.count}, {"us", u.us}});
    nlohmann::json by_op = nlohmann::json::object();
    for (const auto& [op, v] : d.by_op) by_op[op] = {{"kernels", v.first}, {"us", v.second}};
    return nlohmann::json{{"scenario", d.scenario},
                          {"block", d.block},
                          {"inputs", d.inputs},
                          {"kernels", d.kernels},
                          {"kernels_classified", d.kernels_classified},
                          {"kernel_us", d.kernel_us},
                          {"classified_us", d.classified_us},
                          {"classified_share", d.kernel_us > 0 ? d.classified_us / d.kernel_us : 0.0},
                          {"unclassified", unclassified},
                          {"by_op", by_op},
                          {"task_kinds", kinds},
                          {"kernel_floor_us", d.kernel_floor_us},
                          {"launch_gap_us", d.launch_gap_us},
                          {"gemm_sms_measured", d.gemm_sms_measured},
                          {"notes", d.notes},
                          {"out", o.out}};
  });
}

}  // namespace tandem
