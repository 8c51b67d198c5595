#include "reports/html_report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "common/format.h"
#include "common/signed_index.h"
#include "reports/svg_chart.h"

namespace tandem {

namespace {

using nlohmann::json;
using svg::escape;

// Colours of the categories, the same in every chart and in the timeline.
const char* kSlotColors[] = {"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#9c755f"};  // F B W F&B optimizer
constexpr const char* kExposedColor = "#e15759";
constexpr const char* kBubbleColor = "#cfcfcf";
constexpr const char* kCommColor = "#76b7b2";
constexpr const char* kAColor = "#4e79a7";
constexpr const char* kBColor = "#f28e2b";
const char* kLineColors[] = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"};

// Four significant digits: axis ticks read "5 s", "250 ms"; hover titles stay precise enough.
std::string fmt_seconds(double s) {
  if (s == 0.0) return "0 s";
  if (std::abs(s) >= 1.0) return strprintf("%.4g s", s);
  if (std::abs(s) >= 1e-3) return strprintf("%.4g ms", s * 1e3);
  return strprintf("%.4g us", s * 1e6);
}
std::string fmt_gb(double b) { return strprintf("%.1f GB", b / 1e9); }
std::string fmt_ratio(double r) { return strprintf("%.3gx", r); }

// Files by name only: a report travels, the folders of the machine that made it mean nothing.
std::string shown(const std::string& file) { return std::filesystem::path(file).filename().string(); }

// A result's key, or an InputError naming the file and the key.
const json& need(const json& j, const std::string& file, const std::string& key) {
  const json* at = &j;
  std::string path;
  size_t from = 0;
  while (from <= key.size()) {
    const size_t dot = key.find('.', from);
    const std::string part = key.substr(from, dot == std::string::npos ? std::string::npos : dot - from);
    if (!at->is_object() || !at->contains(part))
      throw_input_error(file, key, "missing: not the JSON output of a tandem command this report knows (re-run it with this tandem's --json)");
    at = &(*at)[part];
    if (dot == std::string::npos) break;
    from = dot + 1;
  }
  return *at;
}
double number(const json& j, const std::string& file, const std::string& key) {
  const json& v = need(j, file, key);
  if (!v.is_number()) throw_input_error(file, key, "expected a number");
  return v.get<double>();
}

class Page {
 public:
  std::string id(const std::string& base) {
    const int n = ++ids_[base];
    return n == 1 ? base : base + "-" + std::to_string(n);
  }
  void section(const std::string& base, const std::string& heading, const std::string& body) {
    html_ += "<section id=\"" + id(base) + "\"><h2>" + escape(heading) + "</h2>\n" + body + "</section>\n";
  }
  const std::string& html() const { return html_; }

 private:
  std::map<std::string, int> ids_;
  std::string html_;
};

std::string table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows,
                  const std::string& css = "") {
  std::string out = "<table" + (css.empty() ? "" : " class=\"" + css + "\"") + "><thead><tr>";
  for (const auto& h : head) out += "<th>" + escape(h) + "</th>";
  out += "</tr></thead><tbody>";
  for (const auto& r : rows) {
    out += "<tr>";
    for (const auto& c : r) out += "<td>" + escape(c) + "</td>";
    out += "</tr>";
  }
  return out + "</tbody></table>\n";
}

// Figure captions say what a chart shows and how to read it.
std::string figure(const std::string& chart, const std::string& caption) {
  return "<figure>" + chart + "<figcaption>" + escape(caption) + "</figcaption></figure>\n";
}

// Stacked bars of the time by schedule slot: the average GPU, then every rank.
std::string time_by_rank(const json& times, const std::string& file) {
  static const char* kSlots[] = {"F", "B", "W", "F&B", "optimizer"};
  std::vector<std::string> rows{"average GPU"};
  std::vector<svg::Series> stacks;
  for (int c = 0; c < 5; ++c) stacks.push_back({std::string(kSlots[c]) + " compute", kSlotColors[c], {}});
  stacks.push_back({"exposed comm", kExposedColor, {}});
  stacks.push_back({"bubble", kBubbleColor, {}});
  auto add = [&](const json& split, const std::string& key) {
    for (int c = 0; c < 5; ++c) stacks[idx(c)].values.push_back(number(split, file, key + "." + kSlots[c]));
    stacks[5].values.push_back(number(split, file, key + ".exposed_comm"));
    stacks[6].values.push_back(number(split, file, key + ".bubble"));
  };
  add(times, "seconds_by_slot");
  for (const json& r : need(times, file, "ranks")) {
    rows.push_back("rank " + std::to_string(r.value("rank", 0)));
    add(r, "seconds_by_slot");
  }
  return figure(svg::stacked_bars(rows, stacks, fmt_seconds, "time-by-rank"),
                "Where each pipeline rank's step goes: compute by the schedule slot it ran in (lone forward F, lone "
                "backward B, deferred weight gradients W, overlapped forward-and-backward F&B, end-of-step optimizer), "
                "communication no compute hides, and time both streams sit idle (bubble). Each bar adds up to the step.");
}

std::string time_by_kind(const json& times, const std::string& file) {
  std::vector<std::pair<double, std::string>> kinds;
  for (const auto& [k, v] : need(times, file, "seconds_by_kind").items()) kinds.push_back({v.get<double>(), k});
  std::stable_sort(kinds.begin(), kinds.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> rows;
  svg::Series s{"time per step", kAColor, {}};
  for (const auto& [secs, k] : kinds) {
    rows.push_back(k);
    s.values.push_back(secs);
  }
  return figure(svg::grouped_bars(rows, {s}, fmt_seconds, "time-by-kind"),
                "Time per step in each task kind, per GPU (compute and comm streams overlap, so these add up to more "
                "than the step).");
}

std::string timeline_legend() {
  static const char* kNames[] = {"F", "B", "W", "F&B", "optimizer"};
  std::string out;
  for (int c = 0; c < 5; ++c)
    out += strprintf("<span class=\"key\"><i style=\"background:%s\"></i>%s</span>", kSlotColors[c], escape(kNames[c]).c_str());
  return out + strprintf("<span class=\"key\"><i style=\"background:%s\"></i>comm (tasks that touch merged)</span>", kCommColor);
}

void timeline_section(Page& page, const Trace& t, const std::string& file) {
  page.section("timeline", "Timeline of every pipeline rank",
               "<p>" + escape(shown(file)) + " (" + escape(t.engine) +
                   "): one row per pipeline rank, its compute stream slot by slot (colour: the slot's kind) above its "
                   "comm stream. Hover a block for its slot and times; zoom with the slider, scroll sideways.</p>\n"
                   "<div class=\"legend\">" + timeline_legend() + "</div>\n<div class=\"zoom\"><label>zoom <input type=\"range\" class=\"zoom-slider\" min=\"0\" max=\"6\" "
                   "step=\"0.25\" value=\"0\"></label> <span class=\"zoom-value\">1x</span></div>\n"
                   "<div class=\"timeline-scroll\">" +
                   timeline_svg(t) + "</div>\n");
}

void simulate_sections(Page& page, const ReportInput& in, const Trace* trace) {
  const json& r = in.result;
  const std::string& f = in.file;
  const double step = number(r, f, "step_time_s");
  std::vector<std::vector<std::string>> rows{
      {"scenario", need(r, f, "scenario").get<std::string>()},
      {"GPUs", std::to_string(need(r, f, "gpus").get<int64_t>()) + " (" + std::to_string(need(r, f, "gpus_simulated").get<int64_t>()) +
                   " simulated, " + need(r, f, "fidelity").get<std::string>() + " tier)"},
      {"step time", format_seconds(step) + " for " + format_count(number(r, f, "tokens_per_step")) + " tokens"},
      {"tokens/s per GPU", strprintf("%.0f", number(r, f, "tokens_per_s_per_gpu"))},
      {"MFU (BF16 peak, causal)", strprintf("%.1f %%", 100 * number(r, f, "mfu_causal"))},
      {"compute busy", strprintf("%.1f %% of the step", 100 * number(r, f, "compute_busy_fraction"))},
      {"exposed communication", strprintf("%.1f %%", 100 * number(r, f, "exposed_comm_fraction"))},
      {"bubble", strprintf("%.1f %%", 100 * number(r, f, "bubble_fraction"))},
      {"memory, busiest GPU", fmt_gb(number(r, f, "memory_peak_bytes")) + " of " + fmt_gb(number(r, f, "hbm_bytes"))},
      {"GPU-hours per 1T tokens", strprintf("%.0f", number(r, f, "gpu_hours_per_trillion_tokens"))},
      {"days for " + format_count(number(r, f, "training_tokens")) + " tokens", strprintf("%.1f", number(r, f, "days_for_training_tokens"))},
      {"cost for " + format_count(number(r, f, "training_tokens")) + " tokens", strprintf("%.2f M$", number(r, f, "cost_usd_for_training_tokens") / 1e6)},
  };
  page.section("summary", "Prediction: " + need(r, f, "scenario").get<std::string>(),
               "<p>From " + escape(shown(f)) + " (tandem simulate).</p>\n" + table({"figure", "value"}, rows, "summary"));
  page.section("time-by-rank", "Where a GPU's time goes, per rank", time_by_rank(r, f));
  page.section("time-by-kind", "Time per task kind", time_by_kind(r, f));
  if (trace) timeline_section(page, *trace, f);

  // Memory per rank, by what holds it, against the HBM (older results: totals only).
  std::vector<std::string> ranks;
  const double hbm = number(r, f, "hbm_bytes");
  const std::string caption =
      "Weights, gradients, optimizer state and peak activations on one GPU of each pipeline rank, against the card's HBM (dashed).";
  if (r.contains("memory_parts_per_rank_bytes")) {
    static const char* kParts[] = {"weights", "grads", "optimizer", "activations"};
    static const char* kPartColors[] = {"#4e79a7", "#59a14f", "#edc948", "#e15759"};
    std::vector<svg::Series> parts;
    for (int p = 0; p < 4; ++p) parts.push_back({kParts[p], kPartColors[p], {}});
    const json& per_rank = r["memory_parts_per_rank_bytes"];
    for (size_t k = 0; k < per_rank.size(); ++k) {
      ranks.push_back("rank " + std::to_string(k));
      for (int p = 0; p < 4; ++p) parts[idx(p)].values.push_back(number(per_rank[k], f, kParts[p]));
    }
    page.section("memory", "Memory per GPU of each pipeline rank",
                 figure(svg::stacked_bars(ranks, parts, fmt_gb, "memory", hbm, "HBM " + fmt_gb(hbm)), caption));
  } else {
    svg::Series mem{"memory per GPU", kAColor, {}};
    for (size_t k = 0; k < need(r, f, "memory_per_rank_bytes").size(); ++k) {
      ranks.push_back("rank " + std::to_string(k));
      mem.values.push_back(r["memory_per_rank_bytes"][k].get<double>());
    }
    page.section("memory", "Memory per GPU of each pipeline rank",
                 figure(svg::grouped_bars(ranks, {mem}, fmt_gb, "memory", hbm, "HBM " + fmt_gb(hbm)), caption));
  }

  const json& routing = need(r, f, "routing");
  const std::string routing_model = need(routing, f, "model").get<std::string>();
  if (routing_model == "skewed" || routing_model == "measured") {
    std::vector<std::string> members;
    svg::Series mean{"mean over MoE layers", kAColor, {}}, busiest{"busiest layer", kBColor, {}};
    const json& m = need(r, f, "routing.member_load_mean");
    const json& b = need(r, f, "routing.member_load_busiest_layer");
    for (size_t k = 0; k < m.size(); ++k) {
      members.push_back("EP member " + std::to_string(k));
      mean.values.push_back(m[k].get<double>());
      busiest.values.push_back(k < b.size() ? b[k].get<double>() : NAN);
    }
    page.section("routing", "Routing load per EP member",
                 figure(svg::grouped_bars(members, {mean, busiest}, fmt_ratio, "routing", 1.0, "balanced share"),
                        (routing_model == "skewed"
                             ? strprintf("Rows each member of an EP group computes over its balanced share (skew %.2f, seed %lld): ",
                                         number(routing, f, "skew"), need(routing, f, "seed").get<long long>())
                             : strprintf("Rows each member of an EP group computes over its balanced share (measured histogram, "
                                         "seed %lld): ",
                                         need(routing, f, "seed").get<long long>())) +
                            "the busiest member sets the pace of every all-to-all."));
  } else {
    page.section("routing", "Routing load per EP member",
                 "<p>Balanced routing: every EP member computes its share of the routed rows (scenario routing.model "
                 "balanced; set routing.model=skewed or measured to see hot experts).</p>\n");
  }
}

void execute_sections(Page& page, const ReportInput& in, const Trace* trace) {
  const json& r = in.result;
  const std::string& f = in.file;
  std::vector<std::vector<std::string>> steps;
  for (const json& s : need(r, f, "steps"))
    steps.push_back({std::to_string(s.value("step", 0)), strprintf("%.6f", s.value("loss", 0.0)),
                     format_seconds(s.value("wall_s", 0.0)), strprintf("%.0f", s.value("tokens_per_s", 0.0))});
  std::string body = "<p>From " + escape(shown(f)) + " (tandem execute, " + escape(need(r, f, "backend").get<std::string>()) +
                     " backend, " + escape(need(r, f, "numerics").get<std::string>()) + ", " +
                     escape(need(r, f, "world").get<std::string>()) + ").</p>\n" +
                     table({"step", "loss", "wall time", "tokens/s"}, steps, "summary");
  if (r.contains("step_1")) {
    const json& m = r["step_1"];
    body += table({"step 1, by the executor's clock", "value"},
                  {{"step time", format_seconds(number(m, f, "step_time_s"))},
                   {"compute busy", strprintf("%.1f %%", 100 * number(m, f, "compute_busy_fraction"))},
                   {"exposed communication", strprintf("%.1f %%", 100 * number(m, f, "exposed_comm_fraction"))},
                   {"bubble", strprintf("%.1f %%", 100 * number(m, f, "bubble_fraction"))}});
  }
  page.section("summary", "Measurement: " + need(r, f, "scenario").get<std::string>(), body);
  if (r.contains("step_1")) {
    page.section("time-by-rank", "Where a GPU's time goes, per rank (step 1)", time_by_rank(r["step_1"], f));
    page.section("time-by-kind", "Time per task kind (step 1)", time_by_kind(r["step_1"], f));
  }
  if (trace) timeline_section(page, *trace, f);
}

void compare_sections(Page& page, const ReportInput& in) {
  const json& r = in.result;
  const std::string& f = in.file;
  const std::string a = shown(need(r, f, "a.file").get<std::string>()) + " (" + need(r, f, "a.engine").get<std::string>() + ")";
  const std::string b = shown(need(r, f, "b.file").get<std::string>()) + " (" + need(r, f, "b.engine").get<std::string>() + ")";
  std::string body = "<p>From " + escape(shown(f)) + " (tandem compare). A: " + escape(a) + ". B: " + escape(b) + ".</p>\n";
  const double sa = number(r, f, "a.step_time_s"), sb = number(r, f, "b.step_time_s");
  if (r.value("kinds_only", false)) {
    auto names = [&](const char* key) {
      std::string out;
      for (const json& k : need(r, f, key)) out += (out.empty() ? "" : ", ") + k.get<std::string>();
      return out.empty() ? std::string("none") : out;
    };
    body += table({"figure", "value"},
                  {{"scenario", need(r, f, "scenario").get<std::string>()},
                   {"task kinds compared", std::to_string(need(r, f, "kinds").size())},
                   {"kinds only in A", names("kinds_only_in_a")},
                   {"kinds only in B", names("kinds_only_in_b")},
                   {"step time A", format_seconds(sa) + " (B: a profiler trace of part of a step)"}},
                  "summary");
  } else body += table({"figure", "value"},
                {{"scenario", need(r, f, "scenario").get<std::string>()},
                 {"aligned tasks", std::to_string(need(r, f, "aligned_tasks").get<int64_t>())},
                 {"only in A / only in B", std::to_string(need(r, f, "only_in_a").size()) + " / " + std::to_string(need(r, f, "only_in_b").size())},
                 {"step time A / B", format_seconds(sa) + " / " + format_seconds(sb) + (sa > 0 ? " (B/A " + fmt_ratio(sb / sa) + ")" : "")}},
                "summary");
  std::vector<std::string> kinds;
  // sim is a prediction, exec a measurement: say so in the legend.
  auto side_name = [&](const char* side) {
    const std::string engine = need(r, f, std::string(side) + ".engine").get<std::string>();
    return std::string(side[0] == 'a' ? "A: " : "B: ") + engine +
           (engine == "sim" ? " (predicted)" : engine == "exec" || engine == "profiler" ? " (measured)" : "");
  };
  svg::Series sa_s{side_name("a"), kAColor, {}}, sb_s{side_name("b"), kBColor, {}};
  double lo = INFINITY, hi = 0;
  std::vector<std::vector<std::string>> kind_rows;
  for (const json& k : need(r, f, "kinds")) {
    kinds.push_back(k.value("kind", "?"));
    const double x = k.value("a_s", 0.0), y = k.value("b_s", 0.0);
    sa_s.values.push_back(x);
    sb_s.values.push_back(y);
    for (double v : {x, y})
      if (v > 0) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    kind_rows.push_back({kinds.back(), std::to_string(k.value("tasks", 0)), format_seconds(x), format_seconds(y),
                         x > 0 ? fmt_ratio(y / x) : "-"});
  }
  const bool log_scale = hi > 0 && hi / lo > 50;
  // Kinds only (B a profiler trace): means of one task, not per-step totals.
  const bool kinds_only = r.value("kinds_only", false);
  const std::string per = kinds_only ? "Mean time of one task: A over its tasks of the kind on the layers B measured, B over the "
                                       "measured instances (a profiler trace has no task identities: kinds align, not tasks)"
                                     : "Per GPU per step, aligned tasks only";
  body += "<h3>Predicted vs measured per task kind</h3>\n" +
          figure(svg::grouped_bars(kinds, {sa_s, sb_s}, fmt_seconds, "compare-kinds", 0, "", log_scale),
                 per + (log_scale ? "; log scale: the two differ by orders of magnitude." : ".")) +
          table({"kind", kinds_only ? "A tasks" : "tasks", "A", "B", "B/A"}, kind_rows);
  if (kinds_only) {
    page.section("compare", "Comparison: " + need(r, f, "scenario").get<std::string>(), body);
    return;
  }
  std::vector<std::vector<std::string>> rank_rows;
  for (const json& k : need(r, f, "ranks"))
    rank_rows.push_back({std::to_string(k.value("rank", 0)), format_seconds(k.value("a_compute_s", 0.0)),
                         format_seconds(k.value("b_compute_s", 0.0)), format_seconds(k.value("a_comm_s", 0.0)),
                         format_seconds(k.value("b_comm_s", 0.0)), format_seconds(k.value("a_end_s", 0.0)),
                         format_seconds(k.value("b_end_s", 0.0))});
  body += "<h3>Per pipeline rank</h3>\n" +
          table({"rank", "A compute", "B compute", "A comm", "B comm", "A end", "B end"}, rank_rows);
  auto ident = [](const json& t) {
    std::string s = "rank " + std::to_string(t.value("rank", 0)) + " " + t.value("kind", "?");
    if (t.value("block", -1) >= 0) s += " block " + std::to_string(t.value("block", -1));
    if (t.value("micro_batch", -1) >= 0) s += " mb " + std::to_string(t.value("micro_batch", -1));
    if (t.value("stage", -1) >= 0) s += " stage " + std::to_string(t.value("stage", -1));
    s += t.value("slot", -1) >= 0 ? " slot " + std::to_string(t.value("slot", -1)) : " end-of-step";
    return s;
  };
  std::vector<std::vector<std::string>> top;
  for (const json& t : need(r, f, "most_different")) {
    const double x = t.value("a_s", 0.0), y = t.value("b_s", 0.0);
    top.push_back({ident(t), format_seconds(x), format_seconds(y), x > 0 ? fmt_ratio(y / x) : "-"});
  }
  body += "<h3>Tasks that differ most</h3>\n" + table({"task", "A", "B", "B/A"}, top);
  for (const char* side : {"only_in_a", "only_in_b"}) {
    const json& list = need(r, f, side);
    if (list.empty()) continue;
    std::vector<std::vector<std::string>> rows;
    for (const json& t : list) rows.push_back({ident(t)});
    body += std::string("<h3>Unaligned: ") + (side[8] == 'a' ? "only in A" : "only in B") + "</h3>\n" + table({"task"}, rows);
  }
  page.section("compare", "Comparison: " + need(r, f, "scenario").get<std::string>(), body);
}

void sweep_sections(Page& page, const ReportInput& in) {
  const json& r = in.result;
  const std::string& f = in.file;
  std::vector<std::string> keys;
  for (const json& k : need(r, f, "varied")) keys.push_back(k.get<std::string>());
  if (keys.empty()) throw_input_error(f, "varied", "empty: a sweep varies at least one key");
  const json& runs = need(r, f, "runs");
  // x: the first key's values in run order; one series per combination of the other keys.
  std::vector<std::string> xs;
  std::vector<std::string> series_names;
  for (const json& run : runs) {
    const std::string x = run.value(keys[0], "?");
    if (std::find(xs.begin(), xs.end(), x) == xs.end()) xs.push_back(x);
    std::string name;
    for (size_t k = 1; k < keys.size(); ++k) name += (name.empty() ? "" : ", ") + keys[k] + "=" + run.value(keys[k], "?");
    if (name.empty()) name = "step";
    if (std::find(series_names.begin(), series_names.end(), name) == series_names.end()) series_names.push_back(name);
  }
  struct Metric {
    const char* key;
    const char* label;
    svg::Format format;
  };
  const Metric metrics[] = {
      {"step_time_s", "step time", fmt_seconds},
      {"tokens_per_s_per_gpu", "tokens/s per GPU", [](double v) { return strprintf("%.0f", v); }},
      {"mfu_causal", "MFU (causal)", [](double v) { return strprintf("%.1f %%", 100 * v); }},
      {"bubble_fraction", "bubble", [](double v) { return strprintf("%.1f %%", 100 * v); }},
      {"memory_peak_bytes", "memory, busiest GPU", fmt_gb},
      {"gpu_hours_per_trillion_tokens", "GPU-hours per 1T tokens", [](double v) { return strprintf("%.0f", v); }},
  };
  std::string body = "<p>From " + escape(shown(f)) + " (tandem sweep of " + escape(shown(r.value("scenario", "?"))) + "): " +
                     std::to_string(runs.size()) + " runs. Runs that failed (status other than ok) leave gaps.</p>\n<div class=\"charts\">";
  for (const Metric& m : metrics) {
    std::vector<svg::Series> series;
    for (size_t s = 0; s < series_names.size(); ++s)
      series.push_back({series_names[s], kLineColors[s % 8], std::vector<double>(xs.size(), NAN)});
    for (const json& run : runs) {
      if (run.value("status", "") != "ok" || !run.contains(m.key)) continue;
      std::string name;
      for (size_t k = 1; k < keys.size(); ++k) name += (name.empty() ? "" : ", ") + keys[k] + "=" + run.value(keys[k], "?");
      if (name.empty()) name = "step";
      const size_t si = idx(std::find(series_names.begin(), series_names.end(), name) - series_names.begin());
      const size_t xi = idx(std::find(xs.begin(), xs.end(), run.value(keys[0], "?")) - xs.begin());
      series[si].values[xi] = run[m.key].get<double>();
    }
    body += figure(svg::line_chart(xs, keys[0], series, m.format, m.label, "sweep-chart"), std::string(m.label) + " against " + keys[0]);
  }
  body += "</div>\n";
  std::vector<std::string> head = keys;
  for (const char* h : {"step time", "tokens/s/GPU", "MFU", "bubble", "memory", "status"}) head.push_back(h);
  std::vector<std::vector<std::string>> rows;
  for (const json& run : runs) {
    std::vector<std::string> row;
    for (const auto& k : keys) row.push_back(run.value(k, "?"));
    const bool ok = run.value("status", "") == "ok";
    row.push_back(ok ? format_seconds(run.value("step_time_s", 0.0)) : "");
    row.push_back(ok ? strprintf("%.0f", run.value("tokens_per_s_per_gpu", 0.0)) : "");
    row.push_back(ok ? strprintf("%.1f %%", 100 * run.value("mfu_causal", 0.0)) : "");
    row.push_back(ok ? strprintf("%.1f %%", 100 * run.value("bubble_fraction", 0.0)) : "");
    row.push_back(ok ? fmt_gb(run.value("memory_peak_bytes", 0.0)) : "");
    row.push_back(run.value("status", "?"));
    rows.push_back(row);
  }
  body += table(head, rows);
  page.section("sweep", "Sweep: " + shown(r.value("scenario", "?")), body);
}

void plan_sections(Page& page, const ReportInput& in) {
  const json& r = in.result;
  const std::string& f = in.file;
  std::vector<std::string> keys;
  for (const json& k : need(r, f, "searched")) keys.push_back(k.get<std::string>());
  const json& plans = need(r, f, "plans");
  const int own = need(r, f, "scenario_plan_rank").get<int>();
  std::string body = "<p>From " + escape(shown(f)) + " (tandem plan).</p>\n";
  body += table({"figure", "value"},
                {{"scenario", need(r, f, "scenario").get<std::string>()},
                 {"candidate plans", std::to_string(need(r, f, "enumerated").get<int64_t>())},
                 {"infeasible", std::to_string(need(r, f, "infeasible").get<int64_t>())},
                 {"pruned (lower bound above the table)", std::to_string(r.value("pruned", int64_t{0}))},
                 {"simulated and ranked", std::to_string(need(r, f, "ranked").get<int64_t>())},
                 {"memory headroom", strprintf("%.0f %% of HBM left free", 100 * number(r, f, "memory_headroom"))},
                 {"the scenario's own plan", own > 0 ? "rank " + std::to_string(own) : std::string("not ranked")},
                 {"why the winner wins", need(r, f, "why_the_winner_wins").get<std::string>()},
                 {"against the scenario's plan", r.value("why_not_the_scenario_plan", std::string())}},
                "summary");
  std::vector<std::vector<std::string>> reasons;
  for (const auto& [key, v] : need(r, f, "infeasible_by_key").items())
    reasons.push_back({key, std::to_string(v.value("count", 0)), v.value("example", "")});
  if (!reasons.empty()) body += "<h3>Why plans do not fit</h3>\n" + table({"failing key", "plans", "for example"}, reasons);

  // The fastest plans, with the scenario's own for reference.
  auto label = [&](const json& p) {
    std::string l;
    for (const std::string& k : keys) l += (l.empty() ? "" : " ") + k.substr(k.find('.') + 1) + "=" + p.value(k, "?");
    return l;
  };
  std::vector<std::string> rows;
  svg::Series steps{"step time", kAColor, {}};
  double own_step = 0;
  for (const json& p : plans) {
    if (p.value("scenario_plan", false)) own_step = p.value("step_time_s", 0.0);
    if (rows.size() < 20) {
      rows.push_back("#" + std::to_string(p.value("rank", 0)) + " " + label(p));
      steps.values.push_back(p.value("step_time_s", 0.0));
    }
  }
  body += "<h3>The fastest plans</h3>\n" +
          figure(svg::grouped_bars(rows, {steps}, fmt_seconds, "plan-top", own_step, own_step > 0 ? "the scenario's plan" : "", false, 1100),
                 "Simulated step time of the fastest plans that fit (at most 20), the scenario's own plan dashed.");
  // Each searched key: the best step time reached with each of its values.
  body += "<h3>The best step time against each searched key</h3>\n<div class=\"charts\">";
  for (const std::string& key : keys) {
    std::vector<std::string> xs;
    std::vector<double> best;
    for (const json& p : plans) {
      const std::string v = p.value(key, "?");
      auto it = std::find(xs.begin(), xs.end(), v);
      if (it == xs.end()) {
        xs.push_back(v);
        best.push_back(p.value("step_time_s", 0.0));
      } else {
        double& b = best[idx(it - xs.begin())];
        b = std::min(b, p.value("step_time_s", 0.0));
      }
    }
    // Numeric values in numeric order, names as they came.
    std::vector<size_t> order(xs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    const bool numeric = std::all_of(xs.begin(), xs.end(), [](const std::string& v) {
      return !v.empty() && v.find_first_not_of("0123456789.") == std::string::npos;
    });
    if (numeric) std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return std::stod(xs[a]) < std::stod(xs[b]); });
    std::vector<std::string> x;
    svg::Series line{"best plan", kAColor, {}};
    for (size_t i : order) {
      x.push_back(xs[i]);
      line.values.push_back(best[i]);
    }
    body += figure(svg::line_chart(x, key, {line}, fmt_seconds, "best step time", "plan-key"),
                   "The fastest plan that fits with each value of " + key + " (values with no plan that fits are absent).");
  }
  body += "</div>\n";
  std::vector<std::string> head{"rank"};
  head.insert(head.end(), keys.begin(), keys.end());
  for (const char* h : {"step time", "tokens/s/GPU", "MFU", "memory", "bubble", "exposed comm"}) head.push_back(h);
  std::vector<std::vector<std::string>> top;
  for (const json& p : plans) {
    if (top.size() >= 50) break;
    std::vector<std::string> row{std::to_string(p.value("rank", 0)) + (p.value("scenario_plan", false) ? " (scenario)" : "")};
    for (const std::string& k : keys) row.push_back(p.value(k, "?"));
    row.push_back(format_seconds(p.value("step_time_s", 0.0)));
    row.push_back(strprintf("%.0f", p.value("tokens_per_s_per_gpu", 0.0)));
    row.push_back(strprintf("%.1f %%", 100 * p.value("mfu_causal", 0.0)));
    row.push_back(fmt_gb(p.value("memory_peak_bytes", 0.0)));
    row.push_back(strprintf("%.1f %%", 100 * p.value("bubble_fraction", 0.0)));
    row.push_back(strprintf("%.1f %%", 100 * p.value("exposed_comm_fraction", 0.0)));
    top.push_back(row);
  }
  body += "<h3>Ranked plans (at most 50)</h3>\n" + table(head, top);
  page.section("plan", "Plan search: " + need(r, f, "scenario").get<std::string>(), body);
}

// Zoom for the timeline: re-places every block from its data-s / data-e seconds and redraws the
// axis, so text never stretches.
constexpr const char* kScript = R"JS(
(function () {
  function fmt(s) {
    if (s === 0) return '0 s';
    if (s >= 1) return +s.toPrecision(4) + ' s';
    if (s >= 1e-3) return +(s * 1e3).toPrecision(4) + ' ms';
    return +(s * 1e6).toPrecision(4) + ' us';
  }
  function ticks(hi, count) {
    var raw = hi / count, mag = Math.pow(10, Math.floor(Math.log10(raw))), step = mag;
    var m = [1, 2, 5, 10];
    for (var i = 0; i < m.length; i++) { if (raw <= m[i] * mag) { step = m[i] * mag; break; } }
    var out = [];
    for (var v = 0; v <= hi + step * 1e-9; v += step) out.push(v);
    return out;
  }
  var NS = 'http://www.w3.org/2000/svg';
  document.querySelectorAll('section').forEach(function (section) {
    var slider = section.querySelector('.zoom-slider');
    var svg = section.querySelector('svg.timeline');
    if (!slider || !svg) return;
    var left = +svg.dataset.left, base = +svg.dataset.plot, step = +svg.dataset.step, height = +svg.dataset.height;
    var axis = svg.querySelector('.timeline-axis');
    var blocks = svg.querySelectorAll('[data-s]');
    function draw() {
      var zoom = Math.pow(2, +slider.value), plot = base * zoom;
      section.querySelector('.zoom-value').textContent = +zoom.toPrecision(3) + 'x';
      svg.setAttribute('width', left + plot + 30);
      svg.setAttribute('viewBox', '0 0 ' + (left + plot + 30) + ' ' + height);
      blocks.forEach(function (b) {
        var s = +b.dataset.s, e = +b.dataset.e;
        b.setAttribute('x', left + s / step * plot);
        b.setAttribute('width', Math.max(0.5, (e - s) / step * plot));
      });
      while (axis.firstChild) axis.removeChild(axis.firstChild);
      ticks(step, Math.max(4, Math.round(plot / 110))).forEach(function (t) {
        var x = left + t / step * plot;
        var line = document.createElementNS(NS, 'line');
        line.setAttribute('class', 'grid');
        line.setAttribute('x1', x); line.setAttribute('x2', x);
        line.setAttribute('y1', 22); line.setAttribute('y2', height - 4);
        axis.appendChild(line);
        var text = document.createElementNS(NS, 'text');
        text.setAttribute('class', 'tick');
        text.setAttribute('x', x); text.setAttribute('y', 16);
        text.setAttribute('text-anchor', 'middle');
        text.textContent = fmt(t);
        axis.appendChild(text);
      });
    }
    slider.addEventListener('input', draw);
    // report.html#zoom=3 opens zoomed in (2^3 = 8x): a link that shows a detail, and the test's handle.
    var wanted = /zoom=([0-9.]+)/.exec(location.hash);
    if (wanted) { slider.value = wanted[1]; draw(); }
  });
})();
)JS";

constexpr const char* kStyle = R"CSS(
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 24px auto; max-width: 1320px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
h3 { font-size: 15px; margin-top: 20px; }
.sources { color: #666; font-size: 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #eee; padding: 3px 12px 3px 0; text-align: left; }
th { font-weight: 600; border-bottom: 1px solid #bbb; }
figure { margin: 8px 0 20px; } figcaption { color: #555; font-size: 12px; max-width: 900px; }
svg.chart text, svg.timeline text { font-size: 11px; fill: #333; }
svg .grid { stroke: #e6e6e6; stroke-width: 1; } svg .reference { stroke: #c00; stroke-dasharray: 5 3; stroke-width: 1.5; }
svg .reference-label { fill: #c00; }
.timeline-scroll { overflow-x: auto; border: 1px solid #ddd; }
.charts { display: flex; flex-wrap: wrap; gap: 8px 24px; }
.zoom { margin: 6px 0; }
.legend .key { margin-right: 14px; font-size: 12px; } .legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px; vertical-align: -2px; }
)CSS";

// The slot class of one rank's slot, from the kinds of its compute tasks (no program needed):
// forward and backward parts together: F&B; forward only: F; a backward part: B; else W.
int slot_class_of(const std::set<std::string>& kinds, int slot) {
  if (slot < 0) return 4;
  bool f = false, b = false;
  for (const std::string& k : kinds) {
    if (k == "loss" || (k.size() > 2 && k.compare(k.size() - 2, 2, "_f") == 0)) f = true;
    if (k.size() > 2 && k.compare(k.size() - 2, 2, "_b") == 0) b = true;
  }
  return f && b ? 3 : f ? 0 : b ? 1 : 2;
}

}  // namespace

std::string timeline_svg(const Trace& t, int plot_width) {
  const std::map<int, int> gpu_of_rank = t.gpu_per_rank();
  double step = 0;
  for (const TraceEvent& e : t.events) step = std::max(step, e.end);
  if (step <= 0) step = 1;
  const int left = 80, pitch = 30, top = 26;
  const int height = top + pitch * static_cast<int>(gpu_of_rank.size()) + 8;
  auto x_of = [&](double s) { return left + s / step * plot_width; };
  std::string out = strprintf(
      "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "data-left=\"%d\" data-plot=\"%d\" data-step=\"%.9g\" data-height=\"%d\">",
      left + plot_width + 30, height, left + plot_width + 30, height, left, plot_width, step, height);
  out += "<g class=\"timeline-axis\">";
  for (double tk : svg::nice_ticks(0, step, plot_width / 110)) {
    if (tk > step * 1.0000001) break;
    out += strprintf("<line class=\"grid\" x1=\"%.1f\" y1=\"22\" x2=\"%.1f\" y2=\"%d\"/><text class=\"tick\" x=\"%.1f\" y=\"16\" text-anchor=\"middle\">%s</text>",
                     x_of(tk), x_of(tk), height - 4, x_of(tk), escape(fmt_seconds(tk)).c_str());
  }
  out += "</g>";
  const double merge_gap = step / 20000;  // comm tasks closer than this draw as one block
  int row = 0;
  for (const auto& [rank, gpu] : gpu_of_rank) {
    const int y = top + pitch * row++;
    out += strprintf("<text class=\"row-label\" x=\"%d\" y=\"%d\" text-anchor=\"end\">rank %d</text>", left - 8, y + 13, rank);
    out += strprintf("<text class=\"lane-label\" x=\"%d\" y=\"%d\" text-anchor=\"end\" font-size=\"9\">comm</text>", left - 8, y + 24);
    struct SlotSpan {
      double start = INFINITY, end = 0;
      std::set<std::string> kinds;
      std::set<int> micro_batches;
    };
    std::map<int, SlotSpan> slots;
    std::vector<std::pair<double, double>> comm;
    for (const TraceEvent& e : t.events) {
      if (e.gpu != gpu) continue;
      if (e.stream == "compute") {
        SlotSpan& s = slots[e.slot];
        s.start = std::min(s.start, e.start);
        s.end = std::max(s.end, e.end);
        s.kinds.insert(e.kind);
        if (e.micro_batch >= 0) s.micro_batches.insert(e.micro_batch);
      } else {
        comm.push_back({e.start, e.end});
      }
    }
    static const char* kNames[] = {"F", "B", "W", "F&B", "optimizer"};
    for (const auto& [slot, s] : slots) {
      const int c = slot_class_of(s.kinds, slot);
      std::string mbs;
      for (int m : s.micro_batches) mbs += (mbs.empty() ? " micro-batch " : " & ") + std::to_string(m);
      out += strprintf("<rect class=\"slot slot-%d\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"16\" fill=\"%s\" data-s=\"%.9g\" data-e=\"%.9g\">"
                       "<title>rank %d slot %d: %s%s, %s to %s (%s)</title></rect>",
                       c, x_of(s.start), y, std::max(0.5, x_of(s.end) - x_of(s.start)), kSlotColors[c], s.start, s.end, rank,
                       slot, kNames[c], mbs.c_str(), escape(format_seconds(s.start)).c_str(),
                       escape(format_seconds(s.end)).c_str(), escape(format_seconds(s.end - s.start)).c_str());
    }
    std::sort(comm.begin(), comm.end());
    for (size_t i = 0; i < comm.size();) {
      double b = comm[i].first, e = comm[i].second, busy = 0;
      size_t j = i;
      for (; j < comm.size() && comm[j].first <= e + merge_gap; ++j) {
        e = std::max(e, comm[j].second);
        busy += comm[j].second - comm[j].first;
      }
      out += strprintf("<rect class=\"comm\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"7\" fill=\"%s\" data-s=\"%.9g\" data-e=\"%.9g\">"
                       "<title>rank %d comm: %zu tasks, %s to %s, busy %s</title></rect>",
                       x_of(b), y + 18, std::max(0.5, x_of(e) - x_of(b)), kCommColor, b, e, rank, j - i,
                       escape(format_seconds(b)).c_str(), escape(format_seconds(e)).c_str(), escape(format_seconds(busy)).c_str());
      i = j;
    }
  }
  return out + "</svg>";
}

Result<std::string> html_report(const std::vector<ReportInput>& inputs, const std::string& title) {
  return catch_input_errors([&]() -> std::string {
    if (inputs.empty()) throw_input_error("<command line>", "inputs", "give at least one result or trace file");
    Page page;
    std::vector<bool> trace_used(inputs.size(), false);
    // A trace of the result's engine and scenario (the first not yet used).
    auto trace_for = [&](const std::string& engine, const std::string& scenario) -> const Trace* {
      for (size_t i = 0; i < inputs.size(); ++i)
        if (inputs[i].trace && !trace_used[i] && inputs[i].trace->engine == engine && inputs[i].trace->scenario == scenario) {
          trace_used[i] = true;
          return &*inputs[i].trace;
        }
      return nullptr;
    };
    for (const ReportInput& in : inputs) {
      if (in.trace) continue;
      const std::string command = need(in.result, in.file, "command").get<std::string>();
      if (command == "simulate")
        simulate_sections(page, in, trace_for("sim", need(in.result, in.file, "scenario").get<std::string>()));
      else if (command == "execute")
        execute_sections(page, in, trace_for("exec", need(in.result, in.file, "scenario").get<std::string>()));
      else if (command == "compare")
        compare_sections(page, in);
      else if (command == "sweep")
        sweep_sections(page, in);
      else if (command == "plan")
        plan_sections(page, in);
      else
        throw_input_error(in.file, "command", "'" + command + "': a report is drawn from simulate, execute, compare, sweep or plan results and traces");
    }
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].trace && !trace_used[i]) timeline_section(page, *inputs[i].trace, inputs[i].file);

    std::string sources;
    for (const ReportInput& in : inputs) sources += (sources.empty() ? "" : ", ") + shown(in.file);
    std::string html = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>" + escape(title) +
                       "</title>\n<style>" + kStyle + "</style></head>\n<body>\n<header><h1>" + escape(title) +
                       "</h1><p class=\"sources\">tandem " TANDEM_REPORT_VERSION " report from " + escape(sources) +
                       "</p></header>\n<main>\n" + page.html() + "</main>\n<script>" + kScript + "</script>\n</body></html>\n";
    return html;
  });
}

}  // namespace tandem
