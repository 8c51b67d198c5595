#include "cli/report_command.h"

#include <filesystem>
#include <fstream>

#include "common/chrome_trace.h"
#include "reports/html_report.h"
#include "common/write_file.h"

namespace tandem {

namespace {
constexpr uint64_t kMaxResultBytes = uint64_t{256} << 20;
}

Result<nlohmann::json> report_command(const ReportOptions& o, std::string& text) {
  std::vector<ReportInput> inputs;
  std::string scenario;
  for (const std::string& file : o.inputs) {
    Result<std::string> bytes = read_regular_file(file, kMaxTraceBytes);
    if (!bytes) return bytes.error();
    if (bytes.value().empty())
      return InputError{file, "", "the file is empty; was it written by a command that failed?"};
    Result<nlohmann::json> parsed = catch_input_errors([&] { return parse_json_document(file, bytes.value()); });
    if (!parsed) return parsed.error();
    nlohmann::json j = std::move(parsed.value());
    if (!j.is_object()) return InputError{file, "", "not a JSON object: expected a tandem --json result or trace"};
    ReportInput in;
    in.file = file;
    if (j.contains("traceEvents")) {
      auto t = read_trace(file);
      if (!t) return t.error();
      in.trace = std::move(t.value());
      if (scenario.empty()) scenario = in.trace->scenario;
    } else {
      if (bytes.value().size() > kMaxResultBytes) return InputError{file, "", "larger than a tandem result can be"};
      if (!j.contains("command"))
        return InputError{file, "command", "missing: not the --json output of simulate, execute, compare, sweep or plan of this tandem"};
      if (scenario.empty() && j.contains("scenario") && j["scenario"].is_string()) scenario = std::filesystem::path(j["scenario"].get<std::string>()).filename().string();  // sweeps name a file
      in.result = std::move(j);
    }
    inputs.push_back(std::move(in));
  }
  const std::string title = !o.title.empty() ? o.title : "tandem report: " + (scenario.empty() ? std::string("?") : scenario);
  auto html = html_report(inputs, title);
  if (!html) return html.error();
  std::string why;
  if (!write_file(o.out, html.value(), &why)) return InputError{"<command line>", "-o", "cannot write '" + o.out + "': " + why};
  text = "report: " + o.out + " (" + std::to_string(html.value().size() / 1024) + " KiB, self-contained: open it in a browser)\n";
  return nlohmann::json{{"command", "report"}, {"out", o.out}, {"bytes", html.value().size()}};
}

}  // namespace tandem
