#include "sim/calibrate.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <regex>
#include <set>

#include <yaml-cpp/yaml.h>

#include "common/format.h"
#include "common/signed_index.h"
#include "scenarios/program.h"
#include "scenarios/task_work.h"
#include "sim/all_to_all.h"
#include "scenarios/task_cost.h"
#include "topologies/topology.h"

namespace tandem {

namespace {

constexpr TaskKind kComputeKinds[] = {TaskKind::attn_f, TaskKind::mlp_f, TaskKind::mlp_b,
                                      TaskKind::mlp_w,  TaskKind::attn_b, TaskKind::attn_w};
constexpr TaskKind kCommKinds[] = {TaskKind::dispatch_f, TaskKind::dispatch_b, TaskKind::combine_f,
                                   TaskKind::combine_b};

// Idle gaps between a phase's kernels this long or longer are waits, not launch overhead.
constexpr double kLongGapUs = 20;

bool is_comm_kind(TaskKind k) {
  A2AKind a;
  return a2a_kind(k, &a);
}

double median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// A kernel of a trace as the derivation sees it.
struct Measured {
  const ClassifiedKernel* k = nullptr;
  TaskKind kind{};
  int trace = 0;
  double charged_us = 0;  // share of the compute wall time (compute phases) or duration (comm)
};

// An occurrence of a phase in one trace.
using InstanceKey = std::tuple<int, TaskKind, int>;  // trace, kind, phase index

// The GEMM class of one of the model's GEMMs, in the rules' vocabulary.
std::string gemm_class(const Gemm& g) {
  if (g.a != Dtype::fp8_e4m3) return "gemm_bf16";
  if (g.role == GemmRole::wgrad) return "gemm_fp8_wgrad";
  return g.count > 1 ? "gemm_fp8_grouped" : "gemm_fp8";
}

bool is_gemm_class(const std::string& op) { return op.rfind("gemm_", 0) == 0; }

// Charged time of compute-phase kernels: each instant of the device's wall time split equally
// among the compute kernels running then (kernels on two compute streams share the GPU).
void charge_compute(std::vector<Measured>& ms) {
  std::map<std::pair<int, int>, std::vector<Measured*>> by_device;  // (trace, device)
  for (Measured& m : ms)
    if (!is_comm_kind(m.kind)) by_device[{m.trace, m.k->kernel.device}].push_back(&m);
  for (auto& [dev, list] : by_device) {
    struct Edge {
      double t;
      int delta;
      Measured* m;
    };
    std::vector<Edge> edges;
    for (Measured* m : list) {
      if (m->k->kernel.dur_us <= 0) continue;  // an instant takes no share
      edges.push_back({m->k->kernel.start_us, +1, m});
      edges.push_back({m->k->kernel.start_us + m->k->kernel.dur_us, -1, m});
    }
    std::sort(edges.begin(), edges.end(), [](const Edge& a, const Edge& b) {
      return a.t != b.t ? a.t < b.t : a.delta < b.delta;  // ends before starts at the same instant
    });
    std::set<Measured*> running;
    double last = edges.empty() ? 0 : edges.front().t;
    for (const Edge& e : edges) {
      if (!running.empty() && e.t > last) {
        const double share = (e.t - last) / static_cast<double>(running.size());
        for (Measured* m : running) m->charged_us += share;
      }
      last = e.t;
      if (e.delta > 0) running.insert(e.m);
      else running.erase(e.m);
    }
  }
  for (Measured& m : ms)
    if (is_comm_kind(m.kind)) m.charged_us = m.k->kernel.dur_us;
}

// Solves for the efficiency at which `kernels` take `target` seconds together (their floors and
// arithmetic bounds stay); returns 0 when the floors alone exceed the target.
double solve_efficiency(const std::vector<MemoryKernel>& kernels, double target_s, const GpuSpec& gpu, double floor_us) {
  auto total = [&](double eff) {
    double t = 0;
    for (const MemoryKernel& k : kernels) {
      const double floor = static_cast<double>(k.launches) * floor_us * 1e-6;
      const double stream = k.bytes / (gpu.hbm_tbytes_s * 1e12 * eff);
      const double arithmetic = gpu.fp32_tflops > 0 ? k.flops / (gpu.fp32_tflops * 1e12) : 0.0;
      t += std::max({floor, stream, arithmetic});
    }
    return t;
  };
  if (kernels.empty() || target_s <= 0) return 0;
  double lo = 1e-4, hi = 1.0;
  if (total(hi) > target_s) return hi;  // even at full bandwidth the model is slower: cap at 1
  if (total(lo) < target_s) return 0;   // floors/arithmetic alone exceed or the target is unreachable
  for (int i = 0; i < 100; ++i) {
    const double mid = std::sqrt(lo * hi);
    (total(mid) > target_s ? lo : hi) = mid;
  }
  return std::sqrt(lo * hi);
}

}  // namespace

bool phase_task_kind(const std::string& phase, TaskKind* out) {
  static const std::regex re(R"(^(attn|mlp|dispatch|combine)(?:\(([FBWfbw])\)|_([fbw]))$)");
  std::smatch m;
  if (!std::regex_match(phase, m, re)) return false;
  const std::string part = m[1];
  const char pass = static_cast<char>(std::tolower(m[2].matched ? m[2].str()[0] : m[3].str()[0]));
  const std::string name = part + "_" + pass;
  for (TaskKind k : {TaskKind::attn_f, TaskKind::attn_b, TaskKind::attn_w, TaskKind::mlp_f, TaskKind::mlp_b,
                     TaskKind::mlp_w, TaskKind::dispatch_f, TaskKind::dispatch_b, TaskKind::combine_f,
                     TaskKind::combine_b})
    if (name == to_string(k)) {
      *out = k;
      return true;
    }
  return false;
}

Result<CalibrationDerivation> derive_calibration(const Scenario& s, const Calibration& base,
                                                 const std::vector<ChromeTrace>& traces, const KernelRules& rules) {
  return catch_input_errors([&]() -> CalibrationDerivation {
    CalibrationDerivation d;
    d.scenario = s.name;
    const GpuSpec& gpu = s.cluster.gpu;
    const Workload w = scenario_workload(s);

    // Classify every trace; keep the kernels whose phase is a task kind.
    std::vector<Classification> classified;
    classified.reserve(traces.size());  // Measured points into these: no reallocation
    std::vector<Measured> ms;
    bool tandem_format = false, profiler_format = false;
    for (size_t ti = 0; ti < traces.size(); ++ti) {
      const ChromeTrace& t = traces[ti];
      classified.push_back(classify(t, rules));
      const Classification& c = classified.back();
      // The file's name and digest identify it; its directory is a detail of the machine it was on.
      d.inputs.push_back(std::filesystem::path(t.file).filename().string() + " (sha256 " + t.sha256 + ", " + std::to_string(c.kernels_total) + (t.format == "tandem" ? " task events" : " GPU events") +
                         (t.device_name.empty() ? "" : ", " + t.device_name) +
                         (t.trace_name.empty() ? "" : ", " + t.trace_name) + ")");
      {
        double first = 1e300, last = -1e300;
        for (const TraceKernel& k : t.kernels) {
          first = std::min(first, k.start_us);
          last = std::max(last, k.start_us + k.dur_us);
        }
        d.trace_span_us.push_back(t.kernels.empty() ? 0.0 : last - first);
      }
      d.kernel_us += c.total_us;
      d.classified_us += c.classified_us;
      d.kernels += c.kernels_total;
      d.kernels_classified += c.kernels_classified;
      for (const auto& u : c.unclassified) {
        auto it = std::find_if(d.unclassified.begin(), d.unclassified.end(), [&](const auto& x) { return x.name == u.name; });
        if (it == d.unclassified.end()) d.unclassified.push_back(u);
        else {
          it->count += u.count;
          it->us += u.us;
        }
      }
      (t.format == "tandem" ? tandem_format : profiler_format) = true;
      for (const ClassifiedKernel& k : c.kernels) {
        if (!k.op.empty()) {
          auto& [n, us] = d.by_op[k.op];
          ++n;
          us += k.kernel.dur_us;
        }
        TaskKind kind;
        if (k.op.empty() || !phase_task_kind(k.phase, &kind)) continue;
        ms.push_back(Measured{&k, kind, static_cast<int>(ti), 0});
      }
    }
    std::sort(d.unclassified.begin(), d.unclassified.end(), [](const auto& a, const auto& b) { return a.us > b.us; });
    if (tandem_format && profiler_format)
      throw_input_error(traces.front().file, "traceEvents",
                        "mixes tandem traces (whole tasks) with profiler traces (kernels): calibrate them separately");
    if (ms.empty())
      throw_input_error(traces.front().file, "traceEvents",
                        "no classified kernel falls in a phase named after a task kind (attn(F), mlp_b, dispatch(B), ...): "
                        "nothing to calibrate");
    charge_compute(ms);

    // The layer the trace's phases stand for: an MoE layer when it holds all-to-all phases.
    bool has_a2a = false;
    for (const Measured& m : ms) has_a2a |= is_comm_kind(m.kind);
    int block = -1;
    for (size_t b = 0; b < w.blocks.size() && block < 0; ++b)
      if ((has_a2a && w.blocks[b].kind == BlockKind::moe_layer) ||
          (!has_a2a && (w.blocks[b].kind == BlockKind::moe_layer || w.blocks[b].kind == BlockKind::dense_layer)))
        block = static_cast<int>(b);
    if (block < 0)
      throw_input_error(s.file, "model", "the trace has all-to-all phases but the scenario's model has no MoE layer");
    d.block = w.blocks[idx(block)].name;
    const Program none;
    auto work_of = [&](TaskKind k) {
      Task t;
      t.kind = k;
      t.block = block;
      t.stream = is_comm_kind(k) ? Stream::comm : Stream::compute;
      return task_work(s, w, none, 0, t);
    };

    // Instances and their measured spans.
    std::map<InstanceKey, std::vector<const Measured*>> instances;
    for (const Measured& m : ms) instances[{m.trace, m.kind, m.k->phase_index}].push_back(&m);
    std::map<TaskKind, int> count;
    std::map<TaskKind, double> span, busy, kernels, work;
    for (const auto& [key, list] : instances) {
      const TaskKind kind = std::get<1>(key);
      double first = 1e300, last = -1e300, charged = 0;
      std::vector<std::pair<double, double>> iv;
      for (const Measured* m : list) {
        first = std::min(first, m->k->kernel.start_us);
        last = std::max(last, m->k->kernel.start_us + m->k->kernel.dur_us);
        charged += m->charged_us;
        iv.push_back({m->k->kernel.start_us, m->k->kernel.start_us + m->k->kernel.dur_us});
      }
      // The task's own time: its kernels and the short gaps between them (launches). A gap of
      // kLongGapUs or more is the GPU waiting — for the CPU, or for another stream — which is the
      // schedule's time, not the task's.
      std::sort(iv.begin(), iv.end());
      double busy_union = 0, short_gaps = 0, end = iv.front().first;
      for (const auto& [a, b] : iv) {
        if (a > end && a - end < kLongGapUs) short_gaps += a - end;
        busy_union += std::max(0.0, b - std::max(a, end));
        end = std::max(end, b);
      }
      ++count[kind];
      work[kind] += busy_union + short_gaps;
      span[kind] += last - first;
      busy[kind] += charged;
      kernels[kind] += static_cast<double>(list.size());
    }
    const int layers = std::max_element(count.begin(), count.end(), [](const auto& a, const auto& b) { return a.second < b.second; })->second;

    const int64_t sms = s.gemm_sms();
    const ComputeCostModel before(gpu, base);
    Calibration& out = d.result;
    out.overlay = true;
    out.name = "calibrated from " + std::to_string(traces.size()) + " trace" + (traces.size() > 1 ? "s" : "");
    for (const std::string& in : d.inputs) out.provenance.push_back(in);
    out.provenance.push_back("rules " + rules.file + " (sha256 " + rules.sha256 + ")");
    out.provenance.push_back("shapes from scenario " + s.name + " (" + s.file + "), block " + d.block);

    if (tandem_format) {
      // Whole tasks: the measured over the modelled time per compute task kind.
      std::map<TaskKind, std::pair<double, double>> sums;  // measured s, model s
      for (const Measured& m : ms) {
        if (is_comm_kind(m.kind) || m.k->kernel.block_index < 0 ||
            idx(m.k->kernel.block_index) >= w.blocks.size())
          continue;
        Task t;
        t.kind = m.kind;
        t.block = m.k->kernel.block_index;
        const TaskWork tw = task_work(s, w, none, 0, t);
        sums[m.kind].first += m.k->kernel.dur_us * 1e-6;
        sums[m.kind].second += before.pass_seconds(tw.compute, tw.backward, sms);
      }
      for (const auto& [kind, sm] : sums) {
        if (sm.second <= 0) continue;
        out.task_time_scale[to_string(kind)] = sm.first / sm.second;
        KindFigure f;
        f.kind = to_string(kind);
        f.instances = count[kind];
        f.measured_us = sm.first * 1e6 / count[kind];
        f.span_us = f.measured_us;
        f.busy_us = busy[kind] / count[kind];
        f.kernels = 1;
        f.model_before_us = sm.second * 1e6 / count[kind];
        f.model_after_us = f.measured_us;
        d.kinds.push_back(f);
      }
      d.notes.push_back("task-level calibration (a tandem trace): per compute task kind, the measured time over the model's");
      return d;
    }

    // Floor and launch gap: kernels of less than one wave (latency-bound), and the idle gaps
    // between consecutive kernels on the busiest compute stream while it is fed.
    {
      std::vector<double> small, gaps;
      std::map<std::tuple<int, int, int64_t>, std::vector<const ClassifiedKernel*>> streams;
      std::map<std::tuple<int, int, int64_t>, double> stream_busy;
      for (const Measured& m : ms) {
        if (is_comm_kind(m.kind) || is_gemm_class(m.k->op)) continue;
        const int64_t ctas = m.k->kernel.grid_size();
        if (ctas > 0 && ctas < gpu.sms) small.push_back(m.k->kernel.dur_us);
      }
      for (const Measured& m : ms) {
        if (is_comm_kind(m.kind)) continue;
        const auto key = std::make_tuple(m.trace, m.k->kernel.device, m.k->kernel.stream);
        streams[key].push_back(m.k);
        stream_busy[key] += m.k->kernel.dur_us;
      }
      if (!stream_busy.empty()) {
        const auto main = std::max_element(stream_busy.begin(), stream_busy.end(),
                                           [](const auto& a, const auto& b) { return a.second < b.second; })->first;
        auto& list = streams[main];
        std::sort(list.begin(), list.end(), [](auto* a, auto* b) { return a->kernel.start_us < b->kernel.start_us; });
        // A gap longer than a typical launch is the stream waiting for something else (an event
        // of the comm stream, the CPU): only gaps under 20 µs measure the launch gap.
        for (size_t i = 1; i < list.size(); ++i) {
          const double g = list[i]->kernel.start_us - (list[i - 1]->kernel.start_us + list[i - 1]->kernel.dur_us);
          if (g >= 0 && g < kLongGapUs) gaps.push_back(g);
        }
      }
      d.kernel_floor_us = median(small);
      d.launch_gap_us = median(gaps);
      if (d.kernel_floor_us >= 0) out.kernel_floor_us = d.kernel_floor_us;
      if (d.launch_gap_us >= 0) out.launch_gap_us = d.launch_gap_us;
    }
    const double floor_us = out.kernel_floor_us >= 0 ? out.kernel_floor_us : std::max(0.0, base.kernel_floor_us);

    // The SMs the persistent GEMM kernels were given: their grid (the most common CTA count).
    {
      std::map<int64_t, int> ctas;
      for (const Measured& m : ms)
        if (m.k->op.rfind("gemm_fp8", 0) == 0) ++ctas[m.k->kernel.grid_size()];
      if (!ctas.empty())
        d.gemm_sms_measured = std::max_element(ctas.begin(), ctas.end(), [](const auto& a, const auto& b) { return a.second < b.second; })->first;
      if (d.gemm_sms_measured > 0 && d.gemm_sms_measured != sms)
        d.notes.push_back(strprintf("the FP8 GEMMs ran as persistent kernels of %lld CTAs; the scenario gives GEMMs %lld SMs "
                                    "(%lld - comm.sms %lld)",
                                    static_cast<long long>(d.gemm_sms_measured), static_cast<long long>(sms),
                                    static_cast<long long>(gpu.sms), static_cast<long long>(s.comm.sms)));
    }
    const int64_t measured_sms = d.gemm_sms_measured > 0 ? d.gemm_sms_measured : sms;

    // GEMMs: per kind and instance, the trace's kernels of a class matched to the task's GEMMs of
    // that class, largest FLOPs to the longest kernel.
    for (TaskKind kind : kComputeKinds) {
      if (!count.count(kind)) continue;
      const TaskWork tw = work_of(kind);
      // The model's GEMMs, expanded per launch (per-expert weight-gradient kernels).
      struct Unit {
        size_t gemm;
        double flops;
      };
      std::map<std::string, std::vector<Unit>> units;
      for (size_t gi = 0; gi < tw.compute.gemms.size(); ++gi) {
        const Gemm& g = tw.compute.gemms[gi];
        const int n = g.launches();
        for (int i = 0; i < n; ++i) units[gemm_class(g)].push_back({gi, g.flops() / n});
      }
      std::vector<double> gemm_us(tw.compute.gemms.size(), 0.0);
      std::vector<int> gemm_kernels(tw.compute.gemms.size(), 0);
      std::vector<int> gemm_instances(tw.compute.gemms.size(), 0);
      for (const auto& [key, list] : instances) {
        if (std::get<1>(key) != kind) continue;
        std::map<std::string, std::vector<const Measured*>> trace_gemms;
        for (const Measured* m : list)
          if (is_gemm_class(m->k->op)) trace_gemms[m->k->op].push_back(m);
        std::set<std::string> classes;
        for (const auto& [c, v] : units) classes.insert(c);
        for (const auto& [c, v] : trace_gemms) classes.insert(c);
        for (const std::string& cls : classes) {
          std::vector<Unit> u = units[cls];
          std::vector<const Measured*> t = trace_gemms[cls];
          std::stable_sort(u.begin(), u.end(), [](const Unit& a, const Unit& b) { return a.flops > b.flops; });
          std::stable_sort(t.begin(), t.end(), [](auto* a, auto* b) { return a->charged_us > b->charged_us; });
          if (u.size() != t.size() && std::get<2>(key) == 0)
            d.notes.push_back(strprintf("%s: the trace has %zu %s kernels per instance, the model %zu: matched the %zu largest",
                                        to_string(kind), t.size(), cls.c_str(), u.size(), std::min(u.size(), t.size())));
          std::set<size_t> seen;
          std::set<int64_t> streams;
          for (const Measured* m : t) streams.insert(m->k->kernel.stream);
          const size_t n = std::min(u.size(), t.size());
          if (streams.size() > 1 && n == u.size() && n == t.size()) {
            // Kernels of the class overlapped on two compute streams share the GPU: which ran
            // faster cannot be told apart, so the class's time is shared in proportion to FLOPs.
            double flops = 0, us = 0;
            for (size_t i = 0; i < n; ++i) {
              flops += u[i].flops;
              us += t[i]->charged_us;
            }
            for (size_t i = 0; i < n; ++i) {
              gemm_us[u[i].gemm] += us * u[i].flops / flops;
              ++gemm_kernels[u[i].gemm];
              if (seen.insert(u[i].gemm).second) ++gemm_instances[u[i].gemm];
            }
            continue;
          }
          for (size_t i = 0; i < n; ++i) {
            gemm_us[u[i].gemm] += t[i]->charged_us;
            ++gemm_kernels[u[i].gemm];
            if (seen.insert(u[i].gemm).second) ++gemm_instances[u[i].gemm];
          }
        }
      }
      for (size_t gi = 0; gi < tw.compute.gemms.size(); ++gi) {
        if (gemm_instances[gi] == 0 || gemm_us[gi] <= 0) continue;
        const Gemm& g = tw.compute.gemms[gi];
        const double per_instance_us = gemm_us[gi] / gemm_instances[gi];
        GemmFigure f;
        f.kind = to_string(kind);
        f.name = g.name;
        f.op_class = gemm_class(g);
        f.trace_kernels = gemm_kernels[gi] / gemm_instances[gi];
        f.measured_us = per_instance_us;
        f.model_before_us = before.gemm_seconds(g, measured_sms) * 1e6;
        GemmMeasurement& r = f.row;
        r.dtype = g.a == Dtype::fp8_e4m3 ? Dtype::fp8_e4m3 : Dtype::bf16;
        r.role = g.role;
        r.groups = g.count;
        r.m = g.m;
        r.n = g.n;
        r.k = g.k;
        r.tflops = g.flops() / (per_instance_us * 1e-6) / 1e12;
        r.sms = measured_sms;
        r.source = strprintf("%s %s: %d kernel%s x %d instances", to_string(kind), g.name.c_str(), f.trace_kernels,
                             f.trace_kernels == 1 ? "" : "s", gemm_instances[gi]);
        // Faster than the tensor cores can go: the trace did not run the scenario's shapes.
        const double peak = r.dtype == Dtype::fp8_e4m3 ? gpu.fp8_tflops : gpu.bf16_tflops;
        if (r.tflops > 1.05 * peak) {
          d.notes.push_back(strprintf("%s %s: %.0f TFLOP/s would exceed the %s peak (%.0f): the trace did not run "
                                      "this scenario's shapes; no row kept",
                                      to_string(kind), g.name.c_str(), r.tflops, r.dtype == Dtype::fp8_e4m3 ? "FP8" : "BF16", peak));
          d.gemms.push_back(f);
          continue;
        }
        // The same shape measured in two places (a recomputed forward in backward): one row, at
        // the two measurements' combined rate.
        auto same = std::find_if(out.gemms.begin(), out.gemms.end(), [&](const GemmMeasurement& o) {
          return o.dtype == r.dtype && o.role == r.role && o.groups == r.groups && o.m == r.m && o.n == r.n && o.k == r.k;
        });
        if (same != out.gemms.end()) {
          same->tflops = 2.0 / (1.0 / same->tflops + 1.0 / r.tflops);
          same->source += "; " + r.source;
        } else {
          out.gemms.push_back(r);
        }
        d.gemms.push_back(f);
      }
    }

    // Fused attention: forward and backward efficiency against the BF16 peak, on the GEMMs' SMs.
    {
      double fwd_us = 0, bwd_us = 0;
      for (const Measured& m : ms) {
        if (m.k->op == "attention_fwd") fwd_us += m.charged_us;
        if (m.k->op == "attention_bwd") bwd_us += m.charged_us;
      }
      auto attention_flops = [&](TaskKind k) { return work_of(k).compute.attention_flops; };
      const double ff = attention_flops(TaskKind::attn_f), bf = attention_flops(TaskKind::attn_b);
      // Per instance of the task kind that runs them.
      if (fwd_us > 0 && ff > 0 && count.count(TaskKind::attn_f))
        out.attention_fwd_efficiency = ff * count[TaskKind::attn_f] / (fwd_us * 1e-6) / (gpu.bf16_tflops * 1e12);
      if (bwd_us > 0 && bf > 0 && count.count(TaskKind::attn_b))
        out.attention_bwd_efficiency = bf * count[TaskKind::attn_b] / (bwd_us * 1e-6) / (gpu.bf16_tflops * 1e12);
      for (double* e : {&out.attention_fwd_efficiency, &out.attention_bwd_efficiency})
        if (*e > 1.0) {
          d.notes.push_back(strprintf("attention at %.2f of the BF16 peak: the trace did not run this scenario's shapes; not kept", *e));
          *e = 0;
        }
      if (out.attention_fwd_efficiency > 0 || out.attention_bwd_efficiency > 0) {
        out.attention_sms = measured_sms;
        // The overlay replaces both figures together; keep the base's where this trace has none.
        const double ref = base.attention_sms > 0 ? static_cast<double>(base.attention_sms) : static_cast<double>(gpu.sms);
        if (out.attention_fwd_efficiency <= 0) out.attention_fwd_efficiency = base.attention_fwd_efficiency * static_cast<double>(measured_sms) / ref;
        if (out.attention_bwd_efficiency <= 0) out.attention_bwd_efficiency = base.attention_bwd_efficiency * static_cast<double>(measured_sms) / ref;
      }
    }

    // Memory-kernel families: the model's kernels of the family, in every measured instance of
    // every task kind, take together the time the trace's kernels of that family took.
    {
      std::map<std::string, std::vector<MemoryKernel>> model;
      // A comm task's kernels run on the communication SMs: as if they streamed that much more.
      const double confined = comm_stream_sms(s) > 0 ? static_cast<double>(gpu.sms) / static_cast<double>(comm_stream_sms(s)) : 1.0;
      for (const auto& [kind, n] : count)
        for (MemoryKernel k : work_of(kind).compute.kernels) {
          const double scale = static_cast<double>(n) * (is_comm_kind(kind) ? confined : 1.0);
          k.bytes *= scale;
          k.flops *= scale;
          k.launches *= n;
          model[to_string(k.family)].push_back(k);
        }
      std::map<std::string, std::pair<int, double>> trace;
      for (const Measured& m : ms) {
        KernelFamily f;
        if (!kernel_family_from_string(m.k->op, &f)) continue;
        ++trace[m.k->op].first;
        trace[m.k->op].second += m.charged_us;
      }
      std::set<std::string> names;
      for (const auto& [n, v] : model) names.insert(n);
      for (const auto& [n, v] : trace) names.insert(n);
      for (const std::string& name : names) {
        FamilyFigure f;
        f.family = name;
        // Shown per layer (the most instances any task kind has).
        f.trace_kernels = trace[name].first / layers;
        f.measured_us = trace[name].second / layers;
        double before_s = 0;
        for (const MemoryKernel& k : model[name]) {
          f.model_launches += k.launches;
          f.model_bytes += k.bytes;
          before_s += before.memory_kernel_seconds(k);
        }
        const double target_us = f.measured_us * layers;  // every instance, as `model` holds
        f.model_launches /= layers;
        f.model_bytes /= layers;
        f.model_before_us = before_s * 1e6 / layers;
        if (model[name].empty()) {
          f.note = "the model has no kernel of this family in these task kinds";
        } else if (f.measured_us <= 0) {
          f.note = "no kernel of this family in the trace";
        } else {
          f.efficiency = solve_efficiency(model[name], target_us * 1e-6, gpu, floor_us);
          if (f.efficiency <= 0) f.note = "the model's floors alone exceed the measured time";
          else {
            KernelFamily fam;
            kernel_family_from_string(name, &fam);
            out.family_efficiency[idx(fam)] = f.efficiency;
          }
        }
        d.families.push_back(f);
      }
    }

    // The all-to-all: notify/layout kernels, and the transfer against the alone-case model.
    if (has_a2a && s.plan.ep > 1) {
      const Block& b = w.blocks[idx(block)];
      ClusterCard card = s.cluster;
      card.nodes = std::max<int64_t>(1, (s.plan.ep + card.gpus_per_node - 1) / card.gpus_per_node);
      const Topology topo(card);
      const EpLayout layout{static_cast<int>(s.plan.ep), static_cast<int>(s.plan.ep), static_cast<int>(card.gpus_per_node)};
      const AllToAllCalibration& a = base.all_to_all;
      const double sm_factor = std::max(1.0, static_cast<double>(a.saturating_sms) / static_cast<double>(std::max<int64_t>(1, s.comm.sms)));
      for (TaskKind kind : kCommKinds) {
        if (!count.count(kind)) continue;
        A2AFigure f;
        f.kind = to_string(kind);
        for (const Measured& m : ms) {
          if (m.kind != kind) continue;
          if (m.k->op == "a2a_notify") f.notify_us += m.charged_us;
          else if (m.k->op == "a2a_dispatch" || m.k->op == "a2a_combine") f.transfer_us += m.charged_us;
          else f.other_us += m.charged_us;
        }
        f.notify_us /= count[kind];
        f.transfer_us /= count[kind];
        f.other_us /= count[kind];
        const TaskWork tw = work_of(kind);
        const A2AGroup g(layout, 0, tw.tokens, tw.bytes_per_copy, b.routing);
        const A2APlan plan = plan_all_to_all(layout, topo, g, a.ib_efficiency, a.nvlink_efficiency);
        f.alone_us = plan.seconds[0] * sm_factor * 1e6;
        A2AKind ak;
        a2a_kind(kind, &ak);
        if (f.alone_us > 0 && f.transfer_us > 0) {
          f.factor = f.transfer_us / f.alone_us;
          out.all_to_all.in_training_factor[idx(ak)] = f.factor;
        }
        out.all_to_all.notify_us[idx(ak)] = f.notify_us;
        d.all_to_all.push_back(f);
      }
    }

    // Per task kind: measured beside the model before and after.
    const Calibration after_cal = overlay(base, out);
    const ComputeCostModel after(gpu, after_cal);
    auto model_us = [&](const ComputeCostModel& m, TaskKind kind) {
      const TaskWork tw = work_of(kind);
      if (!is_comm_kind(kind)) return m.pass_seconds(tw.compute, tw.backward, sms) * 1e6;
      double us = m.pass_seconds(tw.compute, false, sms, comm_stream_sms(s)) * 1e6;
      A2AKind ak;
      a2a_kind(kind, &ak);
      const AllToAllCalibration& a = m.calibration().all_to_all;
      us += std::max(0.0, a.notify_us[idx(ak)]);
      // The trace's phases are all in overlapped F&B slots: the in-training case.
      const double factor = a.in_training_factor[idx(ak)] > 0 ? a.in_training_factor[idx(ak)] : 1.0;
      for (const A2AFigure& f : d.all_to_all)
        if (f.kind == to_string(kind)) us += f.alone_us * factor;
      return us;
    };
    for (TaskKind kind : {TaskKind::attn_f, TaskKind::dispatch_f, TaskKind::mlp_f, TaskKind::combine_f, TaskKind::combine_b,
                          TaskKind::mlp_b, TaskKind::mlp_w, TaskKind::dispatch_b, TaskKind::attn_b, TaskKind::attn_w}) {
      if (!count.count(kind)) continue;
      KindFigure f;
      f.kind = to_string(kind);
      f.instances = count[kind];
      f.kernels = static_cast<int>(std::lround(kernels[kind] / count[kind]));
      f.span_us = span[kind] / count[kind];
      f.measured_us = work[kind] / count[kind];
      f.busy_us = busy[kind] / count[kind];
      f.model_before_us = model_us(before, kind);
      f.model_after_us = model_us(after, kind);
      for (const Measured& m : ms)
        if (m.kind == kind) f.parts[is_gemm_class(m.k->op) ? "gemm" : m.k->op].measured_us += m.charged_us / count[kind];
      f.parts["gaps"].measured_us = std::max(0.0, f.measured_us - f.busy_us);
      if (!is_comm_kind(kind)) {
        const TaskWork tw = work_of(kind);
        for (const Gemm& g : tw.compute.gemms) f.parts["gemm"].model_us += after.gemm_seconds(g, sms) * 1e6;
        if (tw.compute.attention_flops > 0)
          f.parts[tw.backward ? "attention_bwd" : "attention_fwd"].model_us +=
              after.attention_seconds(tw.compute.attention_flops, tw.backward, sms) * 1e6;
        for (const MemoryKernel& k : tw.compute.kernels) f.parts[to_string(k.family)].model_us += after.memory_kernel_seconds(k) * 1e6;
        f.parts["gaps"].model_us = static_cast<double>(tw.compute.launches()) * std::max(0.0, after_cal.launch_gap_us);
      } else {
        const TaskWork tw = work_of(kind);
        for (const MemoryKernel& k : tw.compute.kernels)
          f.parts[to_string(k.family)].model_us += after.memory_kernel_seconds(k) * 1e6 *
                                                   (comm_stream_sms(s) > 0 ? static_cast<double>(gpu.sms) / static_cast<double>(comm_stream_sms(s)) : 1.0);
        A2AKind ak;
        a2a_kind(kind, &ak);
        const AllToAllCalibration& a = after_cal.all_to_all;
        f.parts["a2a_notify"].model_us = std::max(0.0, a.notify_us[idx(ak)]);
        const bool dispatch_kernel = kind == TaskKind::dispatch_f || kind == TaskKind::combine_b;
        for (const A2AFigure& x : d.all_to_all)
          if (x.kind == to_string(kind))
            f.parts[dispatch_kernel ? "a2a_dispatch" : "a2a_combine"].model_us =
                x.alone_us * (a.in_training_factor[idx(ak)] > 0 ? a.in_training_factor[idx(ak)] : 1.0);
      }
      d.kinds.push_back(f);
    }
    return d;
  });
}

std::string CalibrationDerivation::text() const {
  std::string t;
  t += "Calibration from " + std::to_string(inputs.size()) + " trace" + (inputs.size() > 1 ? "s" : "") +
       ", shapes from scenario " + scenario + " (" + block + ")\n";
  for (const std::string& in : inputs) t += "  " + in + "\n";
  t += strprintf("Classified %d of %d GPU events: %.2f%% of %.1f ms of GPU time\n", kernels_classified, kernels,
                 kernel_us > 0 ? 100 * classified_us / kernel_us : 0.0, kernel_us / 1e3);
  if (unclassified.empty()) t += "  every kernel classified\n";
  for (const auto& u : unclassified) t += strprintf("  unclassified: %-60.60s %4d x  %9.1f us\n", u.name.c_str(), u.count, u.us);
  if (!kinds.empty()) {
    t += "Per task kind (per instance, us): span | measured (kernels + launch gaps) | model before -> after (after/measured)\n";
    for (const KindFigure& k : kinds)
      t += strprintf("  %-11s x%d %4d kernels  %9.1f | %9.1f | %9.1f -> %9.1f  (%.3f)\n", k.kind.c_str(), k.instances, k.kernels,
                     k.span_us, k.measured_us, k.model_before_us, k.model_after_us,
                     k.measured_us > 0 ? k.model_after_us / k.measured_us : 0.0);
  }
  for (const KindFigure& k : kinds) {
    if (k.kind.rfind("dispatch", 0) == 0 || k.kind.rfind("combine", 0) == 0 || k.parts.empty()) continue;
    t += "  " + k.kind + ":";
    for (const auto& [op, p] : k.parts) t += strprintf(" %s %.0f/%.0f", op.c_str(), p.measured_us, p.model_us);
    t += "  (measured/model us)\n";
  }
  if (kernel_floor_us >= 0 || launch_gap_us >= 0)
    t += strprintf("Kernel floor %.2f us (median of sub-wave kernels), launch gap %.2f us (median idle gap on the main compute stream)\n",
                   kernel_floor_us, launch_gap_us);
  if (gemm_sms_measured > 0) t += strprintf("FP8 GEMMs: persistent kernels of %lld CTAs\n", static_cast<long long>(gemm_sms_measured));
  if (!gemms.empty()) {
    t += "GEMMs (per instance): kind name [class] kernels  measured us (TFLOP/s)  model before us\n";
    for (const GemmFigure& g : gemms)
      t += strprintf("  %-7s %-28s %-17s %2d  %8.1f (%7.1f)  %8.1f\n", g.kind.c_str(), g.name.c_str(), g.op_class.c_str(),
                     g.trace_kernels, g.measured_us, g.row.tflops, g.model_before_us);
  }
  if (!families.empty()) {
    t += "Memory-kernel families (per layer): trace kernels, measured us | model launches, GB, before us -> HBM efficiency\n";
    for (const FamilyFigure& f : families)
      t += strprintf("  %-12s %4d %9.1f | %4d %7.3f %9.1f -> %s%s\n", f.family.c_str(), f.trace_kernels, f.measured_us,
                     f.model_launches, f.model_bytes / 1e9, f.model_before_us,
                     f.efficiency > 0 ? strprintf("%.3f", f.efficiency).c_str() : "-",
                     f.note.empty() ? "" : ("  (" + f.note + ")").c_str());
  }
  if (!all_to_all.empty()) {
    t += "All-to-all (per instance, us): notify | transfer | other; alone model -> in-training factor\n";
    for (const A2AFigure& a : all_to_all)
      t += strprintf("  %-11s %8.1f | %8.1f | %6.1f; %8.1f -> %.3f\n", a.kind.c_str(), a.notify_us, a.transfer_us, a.other_us,
                     a.alone_us, a.factor);
  }
  for (const std::string& n : notes) t += "  note: " + n + "\n";
  return t;
}

std::string CalibrationDerivation::yaml() const {
  YAML::Emitter y;
  y.SetDoublePrecision(6);
  y << YAML::BeginMap;
  y << YAML::Key << "name" << YAML::Value << result.name;
  y << YAML::Key << "overlay" << YAML::Value << true;
  y << YAML::Key << "provenance" << YAML::Value << YAML::BeginSeq;
  for (const std::string& p : result.provenance) y << p;
  y << YAML::EndSeq;
  if (!result.gemms.empty()) {
    y << YAML::Key << "gemms" << YAML::Value << YAML::BeginSeq;
    for (const GemmMeasurement& g : result.gemms) {
      y << YAML::Flow << YAML::BeginMap;
      y << YAML::Key << "dtype" << YAML::Value << (g.dtype == Dtype::fp8_e4m3 ? "fp8" : "bf16");
      y << YAML::Key << "role" << YAML::Value << (g.role ? to_string(*g.role) : "forward");
      y << YAML::Key << "groups" << YAML::Value << g.groups;
      y << YAML::Key << "m" << YAML::Value << g.m << YAML::Key << "n" << YAML::Value << g.n << YAML::Key << "k" << YAML::Value << g.k;
      y << YAML::Key << "tflops" << YAML::Value << std::round(g.tflops * 10) / 10;
      y << YAML::Key << "sms" << YAML::Value << g.sms;
      y << YAML::Key << "source" << YAML::Value << g.source;
      y << YAML::EndMap;
    }
    y << YAML::EndSeq;
  }
  auto num = [&](const char* key, double v, double scale = 1e4) {
    y << YAML::Key << key << YAML::Value << std::round(v * scale) / scale;
  };
  if (result.attention_fwd_efficiency > 0) {
    num("attention_fwd_efficiency", result.attention_fwd_efficiency);
    num("attention_bwd_efficiency", result.attention_bwd_efficiency);
    y << YAML::Key << "attention_sms" << YAML::Value << result.attention_sms;
  }
  bool any = false;
  for (double e : result.family_efficiency) any |= e > 0;
  if (any) {
    y << YAML::Key << "memory_kernels" << YAML::Value << YAML::BeginMap;
    for (int i = 0; i < kKernelFamilies; ++i)
      if (result.family_efficiency[idx(i)] > 0) num(to_string(static_cast<KernelFamily>(i)), result.family_efficiency[idx(i)]);
    y << YAML::EndMap;
  }
  if (result.kernel_floor_us >= 0) num("kernel_floor_us", result.kernel_floor_us, 100);
  if (result.launch_gap_us >= 0) num("launch_gap_us", result.launch_gap_us, 100);
  if (!result.task_time_scale.empty()) {
    y << YAML::Key << "task_time_scale" << YAML::Value << YAML::BeginMap;
    for (const auto& [k, v] : result.task_time_scale) num(k.c_str(), v);
    y << YAML::EndMap;
  }
  if (!all_to_all.empty()) {
    y << YAML::Key << "all_to_all" << YAML::Value << YAML::BeginMap;
    y << YAML::Key << "notify_us" << YAML::Value << YAML::Flow << YAML::BeginMap;
    for (const A2AFigure& a : all_to_all) num(a.kind.c_str(), a.notify_us, 10);
    y << YAML::EndMap;
    y << YAML::Key << "in_training_factor" << YAML::Value << YAML::Flow << YAML::BeginMap;
    for (const A2AFigure& a : all_to_all)
      if (a.factor > 0) num(a.kind.c_str(), a.factor);
    y << YAML::EndMap;
    y << YAML::EndMap;
  }
  // What the derivation saw, for reports and validation (the simulator ignores it).
  y << YAML::Key << "measured" << YAML::Value << YAML::BeginMap;
  y << YAML::Key << "classified_share" << YAML::Value << (kernel_us > 0 ? std::round(classified_us / kernel_us * 1e5) / 1e5 : 0.0);
  y << YAML::Key << "kernel_us" << YAML::Value << std::round(kernel_us);
  y << YAML::Key << "trace_span_us" << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (double v : trace_span_us) y << std::round(v * 10) / 10;
  y << YAML::EndSeq;
  y << YAML::Key << "task_kinds" << YAML::Value << YAML::BeginMap;
  for (const KindFigure& k : kinds) {
    y << YAML::Key << k.kind << YAML::Value << YAML::Flow << YAML::BeginMap;
    y << YAML::Key << "instances" << YAML::Value << k.instances;
    y << YAML::Key << "kernels" << YAML::Value << k.kernels;
    num("measured_us", k.measured_us, 10);
    num("span_us", k.span_us, 10);
    num("charged_us", k.busy_us, 10);
    num("model_before_us", k.model_before_us, 10);
    num("model_after_us", k.model_after_us, 10);
    if (!k.parts.empty()) {
      // Where the kind's time goes, measured / model (µs per instance), by op class.
      y << YAML::Key << "parts" << YAML::Value << YAML::Flow << YAML::BeginMap;
      for (const auto& [op, p] : k.parts)
        y << YAML::Key << op << YAML::Value << YAML::Flow << YAML::BeginSeq << std::round(p.measured_us * 10) / 10
          << std::round(p.model_us * 10) / 10 << YAML::EndSeq;
      y << YAML::EndMap;
    }
    y << YAML::EndMap;
  }
  y << YAML::EndMap;
  y << YAML::EndMap;
  y << YAML::EndMap;
  return std::string(y.c_str()) + "\n";
}

Result<Calibration> base_calibration(const Scenario& s) {
  std::vector<std::string> files;
  for (const std::string& f : s.calibration) {
    auto c = load_calibration(f);
    if (!c) return c.error();
    if (!c.value().overlay) files.push_back(f);
  }
  return catch_input_errors([&] { return resolve_calibration(files); });
}

}  // namespace tandem
