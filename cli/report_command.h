// `tandem report FILE... -o report.html [--title T]`: one self-contained HTML page from tandem's
// outputs (simulate/execute/compare/sweep --json results, simulate/execute traces);
// reports/html_report.h says what each input draws.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct ReportOptions {
  std::vector<std::string> inputs;
  std::string out;
  std::string title;
};

Result<nlohmann::json> report_command(const ReportOptions& o, std::string& text);

}  // namespace tandem
