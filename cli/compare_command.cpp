#include "cli/compare_command.h"

#include "common/trace.h"
#include "reports/trace_compare.h"

namespace tandem {

Result<nlohmann::json> compare_command(const CompareOptions& o, std::string& text) {
  auto a = read_trace(o.a);
  if (!a) return a.error();
  auto b = read_trace(o.b);
  if (!b) return b.error();
  auto c = compare_traces(a.value(), o.a, b.value(), o.b, o.top);
  if (!c) return c.error();
  text = comparison_text(c.value());
  return comparison_json(c.value());
}

}  // namespace tandem
