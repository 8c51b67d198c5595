#include "cli/compare_command.h"

#include "common/chrome_trace.h"
#include "common/trace.h"
#include "reports/trace_compare.h"
#include "scenarios/scenario.h"
#include "sim/calibrate.h"
#include "sim/kernel_rules.h"

namespace tandem {

namespace {

// B a profiler trace: its task kinds measured through the kernel rules, per instance.
TraceComparison against_profile(const CompareOptions& o, const Trace& a, const ChromeTrace& b) {
  if (o.scenario.empty())
    throw_input_error(o.b, "traceEvents",
                      "a profiler trace has no task identities: give --scenario (the scenario A is of: its shapes "
                      "classify the kernels into task kinds, as tandem calibrate does)");
  auto loaded = load_scenario(o.scenario, o.overrides);
  if (!loaded) throw InputException(loaded.error());
  const Scenario& s = loaded.value();
  if (s.name != a.scenario)
    throw_input_error(o.a, "otherData.scenario",
                      "a trace of scenario '" + a.scenario + "', but --scenario is '" + s.name + "': compare a trace of that scenario");
  auto rules = o.rules.empty() ? Result<KernelRules>(default_kernel_rules()) : load_kernel_rules(o.rules);
  if (!rules) throw InputException(rules.error());
  auto base = base_calibration(s);
  if (!base) throw InputException(base.error());
  auto derived = derive_calibration(s, base.value(), {b}, rules.value());
  if (!derived) throw InputException(derived.error());
  std::vector<MeasuredKind> measured;
  for (const KindFigure& k : derived.value().kinds) measured.push_back({k.kind, k.instances, k.measured_us * 1e-6});
  // The measurement stands for the scenario's MoE layers (the layer its shapes came from).
  std::vector<int> blocks;
  const Workload w = scenario_workload(s);
  for (size_t i = 0; i < w.blocks.size(); ++i)
    if (w.blocks[i].kind == BlockKind::moe_layer) blocks.push_back(static_cast<int>(i));
  return compare_with_measured_kinds(a, o.a, measured, o.b, "profiler", blocks);
}

}  // namespace

Result<nlohmann::json> compare_command(const CompareOptions& o, std::string& text) {
  return catch_input_errors([&]() -> nlohmann::json {
    auto a = read_trace(o.a);
    if (!a) throw InputException(a.error());
    auto b_raw = read_chrome_trace(o.b);
    if (!b_raw) throw InputException(b_raw.error());
    TraceComparison c;
    if (b_raw.value().format == "pytorch_profiler") {
      c = against_profile(o, a.value(), b_raw.value());
    } else {
      auto b = trace_from(b_raw.value());
      if (!b) throw InputException(b.error());
      auto aligned = compare_traces(a.value(), o.a, b.value(), o.b, o.top);
      if (!aligned) throw InputException(aligned.error());
      c = std::move(aligned.value());
    }
    text = comparison_text(c);
    return comparison_json(c);
  });
}

}  // namespace tandem
