#include "cli/sweep_command.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/format.h"
#include "cli/axes.h"
#include "cli/child_runs.h"
#include "cli/process_group.h"
#include "common/write_file.h"
#include "scenarios/scenario.h"

namespace tandem {

namespace {

constexpr size_t kMaxRuns = 1000;

}  // namespace

Result<nlohmann::json> sweep(const SweepOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json {
    if (o.vary.empty()) throw_input_error("<command line>", "--vary", "give at least one --vary key=v1,v2,...");
    // What would fail every run fails the sweep instead.
    if (!std::filesystem::is_regular_file(o.path)) throw_input_error(o.path, "", "no such scenario file");
    // A --set the scenario refuses by its own key (unknown, wrong type) fails every run too; a
    // refusal elsewhere may be what the varied keys change, so it is left to the runs.
    if (auto base = load_scenario(o.path, o.overrides); !base)
      for (const std::string& set : o.overrides)
        if (const std::string& key = base.error().key; !key.empty() && set.rfind(key, 0) == 0 &&
                                                      (set.size() == key.size() || set[key.size()] == '.' || set[key.size()] == '='))
          throw InputException(base.error());
    const std::vector<std::string> tiers = {"auto", "replicated", "grouped", "aggregated", "per_pair"};
    if (std::find(tiers.begin(), tiers.end(), o.fidelity) == tiers.end())
      throw_input_error("<command line>", "--fidelity", "must be auto, replicated, grouped, aggregated or per_pair, got '" + o.fidelity + "'");
    std::vector<Axis> axes;
    size_t runs = 1;
    for (const auto& v : o.vary) {
      axes.push_back(parse_axis(v, "--vary"));
      runs *= axes.back().values.size();
      if (runs > kMaxRuns)
        throw_input_error("<command line>", "--vary", "the cross product has more than " + std::to_string(kMaxRuns) + " runs");
    }
    // The CSV grows under a ".incomplete" name and takes its own only when every run is in: a
    // sweep cut short (Ctrl-C, a crash) never leaves a file that looks finished.
    std::ofstream csv;
    const std::string csv_partial = o.csv + ".incomplete";
    if (!o.csv.empty() && ProcessGroup::get().leader()) {  // under MPI, process 0 writes
      csv.open(csv_partial);
      if (!csv) throw_input_error("<command line>", "--csv", "cannot write '" + csv_partial + "'");
    }
    const char* metrics[] = {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "exposed_comm_fraction",
                             "bubble_fraction", "gpu_hours_per_trillion_tokens", "memory_peak_bytes", "sim_wall_s"};
    std::string header;
    for (const auto& a : axes) header += csv_field(a.key) + ",";
    for (const char* m : metrics) header += std::string(m) + ",";
    header += "status";
    if (csv.is_open()) csv << header << "\n";
    t += strprintf("Sweep of %s: %zu runs (%s fidelity)\n", o.path.c_str(), runs, o.fidelity.c_str());
    std::string cols;
    for (const auto& a : axes) cols += strprintf("%-22s ", a.key.c_str());
    t += "  " + cols + strprintf("%9s %9s %6s %10s %8s  %s\n", "step_s", "tok/s/GPU", "MFU%", "GPUh/Ttok", "mem_GB", "status");

    // Every combination's command (last axis fastest), run up to o.jobs at a time.
    std::vector<std::string> commands, labels;
    std::vector<std::vector<std::string>> values;
    std::vector<size_t> index(axes.size(), 0);
    for (size_t run = 0; run < runs; ++run) {
      std::string cmd = shell_quote(o.self) + " simulate " + shell_quote(o.path) + " --json --fidelity " + shell_quote(o.fidelity);
      for (const auto& s : o.overrides) cmd += " --set " + shell_quote(s);
      for (const auto& c : o.calibration) cmd += " --calibration " + shell_quote(c);
      std::string label;
      std::vector<std::string> v;
      for (size_t a = 0; a < axes.size(); ++a) {
        v.push_back(axes[a].values[index[a]]);
        cmd += " --set " + shell_quote(axes[a].key + "=" + v.back());
        label += axes[a].key + "=" + v.back() + " ";
      }
      commands.push_back(cmd);
      labels.push_back(label);
      values.push_back(v);
      for (size_t a = axes.size(); a-- > 0;) {
        if (++index[a] < axes[a].values.size()) break;
        index[a] = 0;
      }
    }
    // One run's row: CSV, text and JSON.
    struct Row {
      std::string csv, text;
      nlohmann::json json;
    };
    auto row_of = [&](size_t run, const ChildRun& c) {
      Row row;
      for (size_t a = 0; a < axes.size(); ++a) {
        const std::string& v = values[run][a];
        row.csv += csv_field(v) + ",";
        row.text += strprintf("%-22s ", v.c_str());
        row.json[axes[a].key] = v;
      }
      std::string status = "ok";
      nlohmann::json result;
      if (c.code == 0) {
        result = nlohmann::json::parse(c.out, nullptr, false);
        if (result.is_discarded() || !result.contains("step_time_s")) status = "error: unreadable output";
      } else {
        status = (c.code == 2 ? "rejected: " : "error: ") + (c.err.empty() ? std::string("exit ") + std::to_string(c.code) : c.err);
      }
      for (const char* m : metrics) {
        const bool have = status == "ok" && result.contains(m);
        row.csv += (have ? strprintf("%.9g", result[m].get<double>()) : std::string()) + ",";
        if (have) row.json[m] = result[m];
      }
      row.json["status"] = status;
      row.csv += csv_field(status) + "\n";
      if (status == "ok") {
        row.text += strprintf("%9.3f %9.0f %6.1f %10.0f %8.1f  ok\n", result["step_time_s"].get<double>(),
                              result["tokens_per_s_per_gpu"].get<double>(), 100 * result["mfu_causal"].get<double>(),
                              result["gpu_hours_per_trillion_tokens"].get<double>(),
                              result["memory_peak_bytes"].get<double>() / 1e9);
      } else {
        row.text += strprintf("%9s %9s %6s %10s %8s  %s\n", "-", "-", "-", "-", "-", status.c_str());
      }
      return row;
    };
    const auto t0 = std::chrono::steady_clock::now();
    Progress progress(runs);
    std::vector<ChildRun> results;
    try {
      // Rows reach the CSV as runs finish (in completion order), so a cut sweep keeps them.
      results = run_children(commands, o.jobs, [&](size_t i, const ChildRun& c) {
        progress.step(labels[i]);
        if (csv.is_open()) csv << row_of(i, c).csv << std::flush;
      });
    } catch (Interrupted& e) {
      progress.finish();
      if (csv.is_open()) e.detail += ": the runs that finished are in " + csv_partial;
      throw;
    }
    progress.finish();

    // The final file: every row, in run order.
    std::string csv_text = header + "\n";
    nlohmann::json rows = nlohmann::json::array(), failed = nlohmann::json::array();
    std::map<std::string, size_t> rejections;  // by the key a rejection names
    std::string first_rejection;
    for (size_t run = 0; run < runs; ++run) {
      Row row = row_of(run, results[run]);
      csv_text += row.csv;
      t += "  " + row.text;
      const std::string status = row.json["status"];
      if (status.rfind("error", 0) == 0) failed.push_back(labels[run] + "-> " + status);
      if (results[run].code == 2) {
        ++rejections[rejected_key(results[run].err)];
        if (first_rejection.empty()) first_rejection = results[run].err;
      }
      rows.push_back(row.json);
    }
    // Every run rejected on the same key: a mistake in the sweep's own input (a bad --set, values
    // of the wrong type for their key), not a what-if.
    if (runs > 0 && rejections.size() == 1 && rejections.begin()->second == runs) {
      if (csv.is_open()) csv.close();
      std::filesystem::remove(csv_partial);
      throw_input_error("<command line>", "--vary", "every run was rejected, e.g. " + first_rejection);
    }
    if (csv.is_open()) {
      csv.close();
      std::string why;
      if (!write_file(o.csv, csv_text, &why)) throw_input_error("<command line>", "--csv", "cannot write '" + o.csv + "': " + why);
      std::filesystem::remove(csv_partial);
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t += strprintf("  %zu runs in %.1f s%s\n", runs, wall, o.csv.empty() ? "" : (", CSV: " + o.csv).c_str());
    nlohmann::json varied = nlohmann::json::array();
    for (const auto& a : axes) varied.push_back(a.key);
    // schema 2: `command` and `varied` (the keys, in --vary order: a report draws each metric
    // against them).
    return nlohmann::json{{"command", "sweep"}, {"schema_version", 2}, {"scenario", o.path},
                          {"varied", varied}, {"runs", rows}, {"failed", failed.size()}, {"failed_runs", failed},
                          {"wall_s", wall}};
  });
}

}  // namespace tandem
