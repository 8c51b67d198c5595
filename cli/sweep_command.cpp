#include "cli/sweep_command.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "common/format.h"
#include "common/subprocess.h"

namespace tandem {

namespace {

constexpr size_t kMaxRuns = 1000;

struct Axis {
  std::string key;
  std::vector<std::string> values;
};

Axis parse_vary(const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw_input_error("<command line>", "--vary", "expected key=v1,v2,... (e.g. --vary cluster.nic_gbps=400,800), got '" + text + "'");
  Axis a{text.substr(0, eq), {}};
  std::string rest = text.substr(eq + 1), item;
  size_t start = 0;
  // Commas inside [...] belong to a list value (e.g. schedule.stage_layers=[4,4,...]).
  int depth = 0;
  for (size_t i = 0; i <= rest.size(); ++i) {
    const char c = i < rest.size() ? rest[i] : ',';
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) {
      item = rest.substr(start, i - start);
      if (item.empty()) throw_input_error("<command line>", "--vary " + a.key, "empty value in '" + text + "'");
      a.values.push_back(item);
      start = i + 1;
    }
  }
  return a;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

struct Child {
  int code = -1;
  std::string out, err;
};

// Runs one child; its stderr (the reason a rejected run gives) goes through a temporary file.
Child run_child(const std::string& cmd) {
  char err_path[] = "/tmp/tandem-sweep-XXXXXX";
  const int fd = mkstemp(err_path);
  if (fd >= 0) close(fd);
  const ProcessRun run = run_process(cmd + " 2>" + shell_quote(err_path));
  Child c{run.code, run.out, {}};
  std::ifstream in(err_path);
  std::getline(in, c.err, '\0');
  std::remove(err_path);
  while (!c.err.empty() && (c.err.back() == '\n' || c.err.back() == ' ')) c.err.pop_back();
  const std::string prefix = "tandem: error: ";
  if (c.err.rfind(prefix, 0) == 0) c.err.erase(0, prefix.size());
  return c;
}

void progress_bar(size_t done, size_t total, const std::string& label) {
  const int width = 30;
  const int filled = static_cast<int>(width * done / std::max<size_t>(1, total));
  std::fprintf(stderr, "\r[%s%s] %zu/%zu %-60.60s", std::string(static_cast<size_t>(filled), '=').c_str(),
               std::string(static_cast<size_t>(width - filled), ' ').c_str(), done, total, label.c_str());
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace

Result<nlohmann::json> sweep(const SweepOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json {
    if (o.vary.empty()) throw_input_error("<command line>", "--vary", "give at least one --vary key=v1,v2,...");
    std::vector<Axis> axes;
    size_t runs = 1;
    for (const auto& v : o.vary) {
      axes.push_back(parse_vary(v));
      runs *= axes.back().values.size();
      if (runs > kMaxRuns)
        throw_input_error("<command line>", "--vary", "the cross product has more than " + std::to_string(kMaxRuns) + " runs");
    }
    std::ofstream csv;
    if (!o.csv.empty()) {
      csv.open(o.csv);
      if (!csv) throw_input_error("<command line>", "--csv", "cannot write '" + o.csv + "'");
    }
    const char* metrics[] = {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "exposed_comm_fraction",
                             "bubble_fraction", "gpu_hours_per_trillion_tokens", "memory_peak_bytes", "sim_wall_s"};
    std::string header;
    for (const auto& a : axes) header += a.key + ",";
    for (const char* m : metrics) header += std::string(m) + ",";
    header += "status";
    if (csv) csv << header << "\n";
    t += strprintf("Sweep of %s: %zu runs (%s fidelity)\n", o.path.c_str(), runs, o.fidelity.c_str());
    std::string cols;
    for (const auto& a : axes) cols += strprintf("%-22s ", a.key.c_str());
    t += "  " + cols + strprintf("%9s %9s %6s %10s %8s  %s\n", "step_s", "tok/s/GPU", "MFU%", "GPUh/Ttok", "mem_GB", "status");

    nlohmann::json rows = nlohmann::json::array();
    std::vector<size_t> index(axes.size(), 0);
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t run = 0; run < runs; ++run) {
      std::string cmd = shell_quote(o.self) + " simulate " + shell_quote(o.path) + " --json --fidelity " + shell_quote(o.fidelity);
      for (const auto& s : o.overrides) cmd += " --set " + shell_quote(s);
      std::string label, row_csv, row_txt;
      nlohmann::json row;
      for (size_t a = 0; a < axes.size(); ++a) {
        const std::string& v = axes[a].values[index[a]];
        cmd += " --set " + shell_quote(axes[a].key + "=" + v);
        label += axes[a].key + "=" + v + " ";
        row_csv += v + ",";
        row_txt += strprintf("%-22s ", v.c_str());
        row[axes[a].key] = v;
      }
      progress_bar(run, runs, label);
      const Child c = run_child(cmd);
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
      std::string csv_status = status;
      for (char& ch : csv_status)
        if (ch == ',' || ch == '\n') ch = ';';
      if (csv) csv << row_csv << csv_status << "\n";
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
      for (size_t a = axes.size(); a-- > 0;) {  // next combination, last axis fastest
        if (++index[a] < axes[a].values.size()) break;
        index[a] = 0;
      }
    }
    progress_bar(runs, runs, "done");
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
