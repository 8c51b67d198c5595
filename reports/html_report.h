// The HTML report: one self-contained file (inline CSS, SVG and a few lines of script; no network)
// from tandem's own outputs, for a person to look at.
//
// Inputs are what the commands write: `simulate --json`, `execute --json`, `compare --json`,
// `sweep --json` and `plan --json` results, and traces (`simulate --trace`, `execute --trace`). A trace joins the
// simulate (sim trace) or execute (exec trace) result of its scenario and gives that result its
// timeline; a trace alone gets a timeline section of its own.
//
// Sections, by input (the ids the browser test looks for, suffixed -2, -3... when repeated):
//   simulate: summary, time-by-rank (stacked bars: F, B, W, F&B, optimizer, exposed comm, bubble),
//             time-by-kind, timeline (with a trace), memory (per rank against HBM), routing
//   execute:  summary, time-by-rank, time-by-kind, timeline (with a trace)
//   compare:  compare (predicted vs measured per task kind, per-rank table, tasks that differ
//             most, unaligned tasks)
//   sweep:    sweep (each metric against the first varied key, one line per value of the others)
//   plan:     plan (the search's counts, why plans do not fit, the fastest plans against the
//             scenario's own, the best step time against each searched key, the ranked table)
// Contract: a result without the keys its section needs is an InputError naming the file and key.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"
#include "common/trace.h"

namespace tandem {

struct ReportInput {
  std::string file;
  nlohmann::json result;       // a command's JSON (has "command"), or null for a trace
  std::optional<Trace> trace;
};

Result<std::string> html_report(const std::vector<ReportInput>& inputs, const std::string& title);

// The timeline of a trace as an SVG: one row per pipeline rank (its lowest-numbered GPU), the
// compute lane drawn slot by slot in its slot's class, the comm lane's tasks merged where they
// touch; data-s / data-e attributes (seconds) let the page's script zoom it.
std::string timeline_svg(const Trace& t, int plot_width = 1200);

}  // namespace tandem
