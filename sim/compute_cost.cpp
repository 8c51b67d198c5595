#include "sim/compute_cost.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/card_reader.h"

namespace tandem {

Result<Calibration> load_calibration(const std::string& path) {
  return catch_input_errors([&] {
    const YAML::Node doc = parse_card_file(path);
    // `tandem bench ... --json` output: its "calibration" section holds what it measured.
    const bool bench = doc.IsMap() && doc["calibration"] && doc["results"];
    CardReader top(doc, path);
    if (bench)
      for (const char* k : {"results", "device", "timing", "calibration_sm_count_target"}) top.ignore(k);
    CardReader r = bench ? top.section("calibration") : top;
    Calibration c;
    c.file = path;
    c.from_bench = bench;
    c.name = r.text("name");
    r.ignore("gpu");
    r.ignore("source");
    auto rows = [&](const char* key, size_t width) {
      if (!r.has(key)) {
        r.ignore(key);
        return;
      }
      const YAML::Node list = r.node()[key];
      if (!list.IsSequence()) r.fail(key, "expected a list of rows");
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string k = std::string(key) + "[" + std::to_string(i) + "]";
        if (!list[i].IsSequence() || list[i].size() != width)
          r.fail(k, "expected [" + std::string(width == 5 ? "groups, " : "") + "m, n, k, tflops]");
        std::vector<double> v;
        for (size_t j = 0; j < width; ++j) {
          try {
            v.push_back(list[i][j].as<double>());
          } catch (const YAML::Exception&) {
            r.fail(k, "expected numbers");
          }
          if (!(v.back() > 0) || !std::isfinite(v.back()) || v.back() > 1e9) r.fail(k, "values must be positive");
        }
        GemmMeasurement g;
        size_t o = 0;
        if (width == 5) g.groups = static_cast<int64_t>(v[o++]);
        g.m = static_cast<int64_t>(v[o]);
        g.n = static_cast<int64_t>(v[o + 1]);
        g.k = static_cast<int64_t>(v[o + 2]);
        g.tflops = v[o + 3];
        c.fp8.push_back(g);
      }
      r.ignore(key);
    };
    rows("fp8_gemms", 4);
    rows("fp8_grouped_gemms", 5);
    // A calibration file is complete; a bench output holds only what that bench measured and is
    // laid over a complete one (overlay()).
    auto efficiency = [&](const char* key) { return bench ? r.number_or(key, 0.0, 0.0, 1.0) : r.number(key, 0.01, 1.0); };
    if (c.fp8.empty() && !bench) r.fail("fp8_gemms", "at least one measured FP8 GEMM is needed");
    c.bf16_gemm_efficiency = efficiency("bf16_gemm_efficiency");
    c.attention_fwd_efficiency = efficiency("attention_fwd_efficiency");
    c.attention_bwd_efficiency = efficiency("attention_bwd_efficiency");
    c.hbm_efficiency = efficiency("hbm_efficiency");
    r.finish();
    if (bench) top.finish();
    return c;
  });
}

Calibration overlay(const Calibration& base, const Calibration& top) {
  Calibration c = base;
  c.name = base.name + " + " + top.name;
  c.file = base.file + " + " + top.file;
  for (const GemmMeasurement& m : top.fp8) {
    auto same = [&](const GemmMeasurement& b) { return b.groups == m.groups && b.m == m.m && b.n == m.n && b.k == m.k; };
    auto it = std::find_if(c.fp8.begin(), c.fp8.end(), same);
    if (it != c.fp8.end()) *it = m;
    else c.fp8.push_back(m);
  }
  auto take = [](double& into, double v) { if (v > 0) into = v; };
  take(c.bf16_gemm_efficiency, top.bf16_gemm_efficiency);
  take(c.attention_fwd_efficiency, top.attention_fwd_efficiency);
  take(c.attention_bwd_efficiency, top.attention_bwd_efficiency);
  take(c.hbm_efficiency, top.hbm_efficiency);
  return c;
}

ComputeCostModel::ComputeCostModel(const GpuSpec& gpu, Calibration cal) : gpu_(gpu), cal_(std::move(cal)) {}

double ComputeCostModel::roofline_seconds(const Gemm& g) const {
  const double peak = (g.a == Dtype::fp8_e4m3 ? gpu_.fp8_tflops : gpu_.bf16_tflops) * 1e12;
  const double bw = gpu_.hbm_tbytes_s * 1e12;
  return std::max(g.flops() / peak, g.bytes() / bw);
}

const GemmMeasurement* ComputeCostModel::nearest(const Gemm& g) const {
  const GemmMeasurement* best = nullptr;
  double best_d = std::numeric_limits<double>::infinity();
  auto l = [](double x) { return std::log2(std::max(1.0, x)); };
  for (const GemmMeasurement& m : cal_.fp8) {
    const bool grouped = m.groups > 1, want_grouped = g.count > 1;
    const double d = std::pow(l(static_cast<double>(g.m)) - l(static_cast<double>(m.m)), 2) +
                     std::pow(l(static_cast<double>(g.n)) - l(static_cast<double>(m.n)), 2) +
                     std::pow(l(static_cast<double>(g.k)) - l(static_cast<double>(m.k)), 2) +
                     (grouped != want_grouped ? 4.0 : 0.0);  // prefer the same kind of kernel
    if (d < best_d) {
      best_d = d;
      best = &m;
    }
  }
  return best;
}

double ComputeCostModel::gemm_seconds(const Gemm& g, double sm_fraction) const {
  if (g.flops() <= 0) return 0;
  double t = 0;
  if (g.a == Dtype::fp8_e4m3) {
    const GemmMeasurement* m = nearest(g);
    Gemm ref = g;
    ref.m = m->m;
    ref.n = m->n;
    ref.k = m->k;
    ref.count = m->groups;
    const double measured = ref.flops() / (m->tflops * 1e12);
    t = measured * roofline_seconds(g) / roofline_seconds(ref);
  } else {
    const double compute = g.flops() / (gpu_.bf16_tflops * 1e12 * cal_.bf16_gemm_efficiency);
    const double memory = g.bytes() / (gpu_.hbm_tbytes_s * 1e12 * cal_.hbm_efficiency);
    t = std::max(compute, memory);
  }
  return t / std::max(1e-3, sm_fraction);
}

double ComputeCostModel::pass_seconds(const PassCost& p, bool backward, double sm_fraction) const {
  double t = 0;
  for (const Gemm& g : p.gemms) t += gemm_seconds(g, sm_fraction);
  if (p.attention_flops > 0) {
    const double eff = backward ? cal_.attention_bwd_efficiency : cal_.attention_fwd_efficiency;
    t += p.attention_flops / (gpu_.bf16_tflops * 1e12 * eff * std::max(1e-3, sm_fraction));
  }
  t += p.other_bytes / (gpu_.hbm_tbytes_s * 1e12 * cal_.hbm_efficiency);
  return t;
}

}  // namespace tandem
