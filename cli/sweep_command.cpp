#include "cli/sweep_command.h"

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/format.h"
#include "cli/axes.h"
#include "cli/child_runs.h"

namespace tandem {

namespace {

constexpr size_t kMaxRuns = 1000;

}  // namespace

Result<nlohmann::json> sweep(const SweepOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json {
    if (o.vary.empty()) throw_input_error("<command line>", "--vary", "give at least one --vary key=v1,v2,...");
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
    if (!o.csv.empty()) {
      csv.open(csv_partial);
      if (!csv) throw_input_error("<command line>", "--csv", "cannot write '" + csv_partial + "'");
    }
    const char* metrics[] = {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "exposed_comm_fraction",
                             "bubble_fraction", "gpu_hours_per_trillion_tokens", "memory_peak_bytes", "sim_wall_s"};
    std::string header;
    for (const auto& a : axes) header += csv_field(a.key) + ",";
    for (const char* m : metrics) header += std::string(m) + ",";
    header += "status";
    if (csv) csv << header << "\n";
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
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<ChildRun> results = run_children(commands, o.jobs, [&](size_t i) { return labels[i]; });

    nlohmann::json rows = nlohmann::json::array();
    for (size_t run = 0; run < runs; ++run) {
      std::string row_csv, row_txt;
      nlohmann::json row;
      for (size_t a = 0; a < axes.size(); ++a) {
        const std::string& v = values[run][a];
        row_csv += csv_field(v) + ",";
        row_txt += strprintf("%-22s ", v.c_str());
        row[axes[a].key] = v;
      }
      const ChildRun& c = results[run];
      std::string status = "ok";
      nlohmann::json result;
      if (c.code == 0) {
        try {
          result = nlohmann::json::parse(c.out);
        } catch (const std::exception&) {
          status = "error: unreadable output";
        }
      } else {
        status = (c.code == 2 ? "rejected: " : "error: ") + (c.err.empty() ? std::string("exit ") + std::to_string(c.code) : c.err);
      }
      for (const char* m : metrics) {
        const bool have = result.contains(m);
        row_csv += (have ? strprintf("%.9g", result[m].get<double>()) : std::string()) + ",";
        if (have) row[m] = result[m];
      }
      row["status"] = status;
      if (csv) csv << row_csv << csv_field(status) << "\n";
      if (status == "ok") {
        row_txt += strprintf("%9.3f %9.0f %6.1f %10.0f %8.1f  ok\n", result["step_time_s"].get<double>(),
                             result["tokens_per_s_per_gpu"].get<double>(), 100 * result["mfu_causal"].get<double>(),
                             result["gpu_hours_per_trillion_tokens"].get<double>(),
                             result["memory_peak_bytes"].get<double>() / 1e9);
      } else {
        row_txt += strprintf("%9s %9s %6s %10s %8s  %s\n", "-", "-", "-", "-", "-", status.c_str());
      }
      t += "  " + row_txt;
      rows.push_back(row);
    }
    if (csv) {
      csv.close();
      std::error_code ec;
      std::filesystem::rename(csv_partial, o.csv, ec);
      if (!csv || ec) throw_input_error("<command line>", "--csv", "cannot write '" + o.csv + "'");
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    t += strprintf("  %zu runs in %.1f s%s\n", runs, wall, o.csv.empty() ? "" : (", CSV: " + o.csv).c_str());
    nlohmann::json varied = nlohmann::json::array();
    for (const auto& a : axes) varied.push_back(a.key);
    // schema 2: `command` and `varied` (the keys, in --vary order: a report draws each metric
    // against them).
    return nlohmann::json{{"command", "sweep"}, {"schema_version", 2}, {"scenario", o.path},
                          {"varied", varied}, {"runs", rows}, {"wall_s", wall}};
  });
}

}  // namespace tandem
