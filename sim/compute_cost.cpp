#include "sim/compute_cost.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "common/card_reader.h"
#include "common/signed_index.h"
#include "sim/shipped_data.h"

namespace tandem {

const char* to_string(A2AKind k) {
  switch (k) {
    case A2AKind::dispatch_f: return "dispatch_f";
    case A2AKind::dispatch_b: return "dispatch_b";
    case A2AKind::combine_f: return "combine_f";
    case A2AKind::combine_b: return "combine_b";
  }
  return "?";
}

namespace {

constexpr double kMaxTflops = 1e5;  // no kernel measurement is anywhere near 100 PFLOP/s

// Rows of numbers: [m, n, k, tflops] or [groups, m, n, k, tflops].
void read_rows(CardReader& r, const char* key, size_t width, Dtype dtype, std::vector<GemmMeasurement>& out) {
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
      if (!(v.back() > 0) || !std::isfinite(v.back())) r.fail(k, "values must be positive");
      const bool count = j + 1 < width;
      if (count && (v.back() != std::floor(v.back()) || v.back() > 1e9)) r.fail(k, "shapes must be whole numbers up to 1e9");
      if (!count && v.back() > kMaxTflops) r.fail(k, "tflops must be at most " + format_number(kMaxTflops));
    }
    GemmMeasurement g;
    g.dtype = dtype;
    size_t o = 0;
    if (width == 5) g.groups = static_cast<int64_t>(v[o++]);
    g.m = static_cast<int64_t>(v[o]);
    g.n = static_cast<int64_t>(v[o + 1]);
    g.k = static_cast<int64_t>(v[o + 2]);
    g.tflops = v[o + 3];
    out.push_back(g);
  }
  r.read_whole(key, width == 5 ? "list of [groups, m, n, k, tflops]" : "list of [m, n, k, tflops]");
}

// Detailed rows: {dtype, role, groups, m, n, k, tflops, sms, kernels, source}.
void read_detailed_rows(CardReader& r, std::vector<GemmMeasurement>& out) {
  if (!r.has("gemms")) {
    r.ignore("gemms");
    return;
  }
  const YAML::Node list = r.node()["gemms"];
  if (!list.IsSequence()) r.fail("gemms", "expected a list of rows");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string k = "gemms[" + std::to_string(i) + "]";
    if (!list[i].IsMap()) r.fail(k, "expected a map {dtype, role, groups, m, n, k, tflops, sms, source}");
    CardReader row(list[i], r.file(), r.path(k) + ".");
    GemmMeasurement g;
    g.dtype = row.choice_or("dtype", "fp8", {"fp8", "bf16"}) == "fp8" ? Dtype::fp8_e4m3 : Dtype::bf16;
    const std::string role = row.choice_or("role", "forward", {"forward", "fprop", "dgrad", "wgrad"});
    if (role == "fprop") g.role = GemmRole::fprop;
    if (role == "dgrad") g.role = GemmRole::dgrad;
    if (role == "wgrad") g.role = GemmRole::wgrad;
    g.groups = row.integer_or("groups", 1, 1, 1 << 20);
    g.m = row.integer("m", 1, 1000000000);
    g.n = row.integer("n", 1, 1000000000);
    g.k = row.integer("k", 1, 1000000000);
    g.tflops = row.number("tflops", 1e-6, kMaxTflops);
    g.sms = row.integer_or("sms", 0, 0, 100000);
    g.source = row.text_or("source", "");
    row.ignore("kernels");
    row.ignore("measured_us");
    row.finish();
    out.push_back(g);
  }
  r.read_whole("gemms", "list of rows (gemms[] keys)");
}

std::array<double, kA2AKinds> read_per_kind(CardReader& r, const char* key, double min, double max, double unset) {
  std::array<double, kA2AKinds> v;
  v.fill(unset);
  auto sec = r.optional_section(key);
  if (!sec) return v;
  for (int i = 0; i < kA2AKinds; ++i) {
    const char* name = to_string(static_cast<A2AKind>(i));
    if (sec->has(name)) v[idx(i)] = sec->number(name, min, max);
  }
  sec->finish();
  return v;
}

// A parsed calibration document; `path` names it in errors.
Calibration read_calibration(const YAML::Node& doc, const std::string& path) {
  // `tandem bench ... --json` output: its "calibration" section holds what it measured.
  const bool bench = doc.IsMap() && doc["calibration"] && doc["results"];
  CardReader top(doc, path);
  if (bench)
    for (const char* k : {"results", "device", "timing", "calibration_sm_count_target", "schema_version", "tandem_version"}) top.ignore(k);
  CardReader r = bench ? top.section("calibration") : top;
  Calibration c;
  c.file = path;
  c.from_bench = bench;
  c.name = r.text("name");
  c.overlay = bench || r.boolean_or("overlay", false);
  r.ignore("gpu");
  r.ignore("source");
  r.ignore("measured");  // what a derivation saw, for reports: no bearing on the simulation
  if (r.has("provenance")) {
    const YAML::Node p = r.node()["provenance"];
    if (p.IsSequence())
      for (const auto& line : p) c.provenance.push_back(line.IsScalar() ? line.as<std::string>() : YAML::Dump(line));
    else if (p.IsScalar()) c.provenance.push_back(p.as<std::string>());
    else r.fail("provenance", "expected text or a list");
  }
  r.ignore("provenance");
  read_rows(r, "fp8_gemms", 4, Dtype::fp8_e4m3, c.gemms);
  read_rows(r, "fp8_grouped_gemms", 5, Dtype::fp8_e4m3, c.gemms);
  read_rows(r, "bf16_gemms", 4, Dtype::bf16, c.gemms);
  read_detailed_rows(r, c.gemms);
  const bool complete = !c.overlay;
  // A complete file states every figure; an overlay or a bench output only what it measured.
  auto efficiency = [&](const char* key) { return complete ? r.number(key, 0.001, 1.0) : r.number_or(key, 0.0, 0.0, 1.0); };
  bool has_fp8 = false;
  for (const auto& g : c.gemms) has_fp8 |= g.dtype == Dtype::fp8_e4m3;
  if (complete && !has_fp8) r.fail("fp8_gemms", "at least one measured FP8 GEMM is needed");
  c.bf16_gemm_efficiency = efficiency("bf16_gemm_efficiency");
  c.attention_fwd_efficiency = efficiency("attention_fwd_efficiency");
  c.attention_bwd_efficiency = efficiency("attention_bwd_efficiency");
  c.attention_sms = r.integer_or("attention_sms", 0, 0, 100000);
  c.hbm_efficiency = efficiency("hbm_efficiency");
  if (auto mk = r.optional_section("memory_kernels")) {
    for (int i = 0; i < kKernelFamilies; ++i) {
      const char* name = to_string(static_cast<KernelFamily>(i));
      if (mk->has(name)) c.family_efficiency[idx(i)] = mk->number(name, 0.0001, 1.0);
    }
    mk->finish();
  }
  c.kernel_floor_us = complete ? r.number("kernel_floor_us", 0, 1000) : r.number_or("kernel_floor_us", -1, 0, 1000);
  c.launch_gap_us = complete ? r.number("launch_gap_us", 0, 1000) : r.number_or("launch_gap_us", -1, 0, 1000);
  auto a2a = complete ? std::optional<CardReader>(r.section("all_to_all")) : r.optional_section("all_to_all");
  if (a2a) {
    AllToAllCalibration& a = c.all_to_all;
    a.ib_efficiency = complete ? a2a->number("ib_efficiency", 0.01, 1.0) : a2a->number_or("ib_efficiency", 0, 0, 1.0);
    a.nvlink_efficiency = complete ? a2a->number("nvlink_efficiency", 0.01, 1.0) : a2a->number_or("nvlink_efficiency", 0, 0, 1.0);
    a.saturating_sms = complete ? a2a->integer("saturating_sms", 1, 100000) : a2a->integer_or("saturating_sms", 0, 0, 100000);
    a.notify_us = read_per_kind(*a2a, "notify_us", 0, 1e6, complete ? 0.0 : -1.0);
    a.in_training_factor = read_per_kind(*a2a, "in_training_factor", 0.1, 100, complete ? 1.0 : 0.0);
    a2a->finish();
  }
  if (auto ts = r.optional_section("task_time_scale")) {
    static const char* kinds[] = {"attn_f", "attn_b", "attn_w", "mlp_f", "mlp_b", "mlp_w", "loss", "optimizer"};
    for (const char* k : kinds)
      if (ts->has(k)) c.task_time_scale[k] = ts->number(k, 1e-6, 1e6);
    ts->finish();
  }
  r.finish();
  if (bench) top.finish();
  return c;
}

}  // namespace

Result<Calibration> load_calibration(const std::string& path) {
  return catch_input_errors([&] { return read_calibration(parse_card_file(path), path); });
}

Result<Calibration> load_calibration_text(const std::string& text, const std::string& source) {
  return catch_input_errors([&] { return read_calibration(parse_card_text(text, source), source); });
}

Calibration overlay(const Calibration& base, const Calibration& top) {
  Calibration c = base;
  c.name = base.name + " + " + top.name;
  c.file = base.file + " + " + top.file;
  for (const GemmMeasurement& m : top.gemms) {
    auto same = [&](const GemmMeasurement& b) {
      return b.dtype == m.dtype && b.role == m.role && b.groups == m.groups && b.m == m.m && b.n == m.n && b.k == m.k &&
             b.sms == m.sms;
    };
    auto it = std::find_if(c.gemms.begin(), c.gemms.end(), same);
    if (it != c.gemms.end()) *it = m;
    else c.gemms.push_back(m);
  }
  auto take = [](double& into, double v, double unset = 0) { if (v > unset) into = v; };
  take(c.bf16_gemm_efficiency, top.bf16_gemm_efficiency);
  take(c.attention_fwd_efficiency, top.attention_fwd_efficiency);
  take(c.attention_bwd_efficiency, top.attention_bwd_efficiency);
  if (top.attention_fwd_efficiency > 0 || top.attention_bwd_efficiency > 0) c.attention_sms = top.attention_sms;
  take(c.hbm_efficiency, top.hbm_efficiency);
  for (size_t i = 0; i < c.family_efficiency.size(); ++i) take(c.family_efficiency[i], top.family_efficiency[i]);
  if (top.kernel_floor_us >= 0) c.kernel_floor_us = top.kernel_floor_us;
  if (top.launch_gap_us >= 0) c.launch_gap_us = top.launch_gap_us;
  AllToAllCalibration& a = c.all_to_all;
  const AllToAllCalibration& t = top.all_to_all;
  take(a.ib_efficiency, t.ib_efficiency);
  take(a.nvlink_efficiency, t.nvlink_efficiency);
  if (t.saturating_sms > 0) a.saturating_sms = t.saturating_sms;
  for (size_t i = 0; i < a.notify_us.size(); ++i) {
    if (t.notify_us[i] >= 0) a.notify_us[i] = t.notify_us[i];
    take(a.in_training_factor[i], t.in_training_factor[i]);
  }
  for (const auto& [kind, scale] : top.task_time_scale) c.task_time_scale[kind] = scale;
  c.provenance.insert(c.provenance.end(), top.provenance.begin(), top.provenance.end());
  return c;
}

Calibration default_calibration() {
  const char* kDefault = "sim/calibration/h800-deepgemm.yaml";
  auto c = load_calibration_text(std::string(built_in_file(kDefault).value()), built_in_name(kDefault));
  if (!c) throw InputException(c.error());
  return c.value();
}

Calibration resolve_calibration(const std::vector<std::string>& files) {
  auto load = [](const std::string& path) {
    auto c = load_calibration(path);
    if (!c) throw InputException(c.error());
    return c.value();
  };
  std::vector<Calibration> given;
  for (const std::string& path : files) given.push_back(load(path));
  const bool base_given = !given.empty() && !given.front().overlay;
  Calibration cal = base_given ? given.front() : default_calibration();
  for (size_t i = base_given ? 1 : 0; i < given.size(); ++i) {
    if (!given[i].overlay)
      throw_input_error(given[i].file, "overlay",
                        "only the first calibration may be a complete file; later ones must be overlays "
                        "(`tandem calibrate` output, `overlay: true`) or `tandem bench --json` outputs");
    cal = overlay(cal, given[i]);
  }
  return cal;
}

ComputeCostModel::ComputeCostModel(const GpuSpec& gpu, Calibration cal) : gpu_(gpu), cal_(std::move(cal)) {}

double ComputeCostModel::roofline_seconds(const Gemm& g) const {
  const double peak = (g.a == Dtype::fp8_e4m3 ? gpu_.fp8_tflops : gpu_.bf16_tflops) * 1e12;
  const double bw = gpu_.hbm_tbytes_s * 1e12;
  return std::max(g.flops() / peak, g.bytes() / bw);
}

const GemmMeasurement* ComputeCostModel::nearest(const Gemm& g, int64_t sms) const {
  const GemmMeasurement* best = nullptr;
  double best_d = std::numeric_limits<double>::infinity();
  auto l = [](double x) { return std::log2(std::max(1.0, x)); };
  const Dtype dtype = g.a == Dtype::fp8_e4m3 ? Dtype::fp8_e4m3 : Dtype::bf16;
  const bool want_wgrad = g.role == GemmRole::wgrad;
  for (const GemmMeasurement& m : cal_.gemms) {
    if (m.dtype != dtype) continue;
    const bool grouped = m.groups > 1, want_grouped = g.count > 1;
    const double d = std::pow(l(static_cast<double>(g.m)) - l(static_cast<double>(m.m)), 2) +
                     std::pow(l(static_cast<double>(g.n)) - l(static_cast<double>(m.n)), 2) +
                     std::pow(l(static_cast<double>(g.k)) - l(static_cast<double>(m.k)), 2) +
                     (grouped != want_grouped ? 100.0 : 0.0) +        // grouped and dense kernels are apart
                     (m.wgrad() != want_wgrad ? 100.0 : 0.0) +         // weight-gradient kernels are their own family
                     // On a tie, a row measured for the very role and on as many SMs as the
                     // GEMM is given (a profiler trace's) wins over a general table's.
                     (!m.role ? 0.002 : *m.role != g.role ? 0.01 : 0.0) + (m.sms != sms ? 0.001 : 0.0);
    if (d < best_d) {
      best_d = d;
      best = &m;
    }
  }
  return best;
}

double ComputeCostModel::gemm_seconds(const Gemm& g, int64_t sms) const {
  if (g.flops() <= 0) return 0;
  const double gpu_sms = static_cast<double>(gpu_.sms);
  const double given = sms > 0 ? static_cast<double>(sms) : gpu_sms;
  const GemmMeasurement* m = nearest(g, sms > 0 ? sms : gpu_.sms);
  if (!m) {
    // No row of this dtype (BF16 without a table): a stated fraction of the peak.
    const double compute = g.flops() / (gpu_.bf16_tflops * 1e12 * cal_.bf16_gemm_efficiency);
    const double memory = g.bytes() / (gpu_.hbm_tbytes_s * 1e12 * cal_.hbm_efficiency);
    return std::max(compute, memory) * gpu_sms / given;
  }
  Gemm ref = g;
  ref.m = m->m;
  ref.n = m->n;
  ref.k = m->k;
  ref.count = m->groups;
  const double measured = ref.flops() / (m->tflops * 1e12);
  const double row_sms = m->sms > 0 ? static_cast<double>(m->sms) : gpu_sms;
  return measured * roofline_seconds(g) / roofline_seconds(ref) * row_sms / given;
}

double ComputeCostModel::attention_seconds(double flops, bool backward, int64_t sms) const {
  if (flops <= 0) return 0;
  const double eff = backward ? cal_.attention_bwd_efficiency : cal_.attention_fwd_efficiency;
  const double gpu_sms = static_cast<double>(gpu_.sms);
  const double ref_sms = cal_.attention_sms > 0 ? static_cast<double>(cal_.attention_sms) : gpu_sms;
  const double given = sms > 0 ? static_cast<double>(sms) : gpu_sms;
  return flops / (gpu_.bf16_tflops * 1e12 * eff) * ref_sms / given;
}

double ComputeCostModel::memory_kernel_seconds(const MemoryKernel& k) const {
  const double floor = static_cast<double>(k.launches) * std::max(0.0, cal_.kernel_floor_us) * 1e-6;
  const double stream = k.bytes / (gpu_.hbm_tbytes_s * 1e12 * cal_.family_hbm_efficiency(k.family));
  const double arithmetic = gpu_.fp32_tflops > 0 ? k.flops / (gpu_.fp32_tflops * 1e12) : 0.0;
  return std::max({floor, stream, arithmetic});
}

double ComputeCostModel::pass_seconds(const PassCost& p, bool backward, int64_t sms, int64_t memory_sms) const {
  double t = 0;
  for (const Gemm& g : p.gemms) t += gemm_seconds(g, sms);
  t += attention_seconds(p.attention_flops, backward, sms);
  const double confined = memory_sms > 0 ? static_cast<double>(gpu_.sms) / static_cast<double>(memory_sms) : 1.0;
  for (const MemoryKernel& k : p.kernels) t += memory_kernel_seconds(k) * std::max(1.0, confined);
  return t + static_cast<double>(p.launches()) * std::max(0.0, cal_.launch_gap_us) * 1e-6;
}

}  // namespace tandem
