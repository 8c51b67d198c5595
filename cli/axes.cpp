#include "cli/axes.h"

#include "common/input_error.h"

namespace tandem {

Axis parse_axis(const std::string& text, const std::string& option) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == text.size())
    throw_input_error("<command line>", option, "expected key=v1,v2,... (e.g. " + option + " cluster.nic_gbps=400,800), got '" + text + "'");
  Axis a{text.substr(0, eq), {}};
  const std::string rest = text.substr(eq + 1);
  size_t start = 0;
  int depth = 0;
  for (size_t i = 0; i <= rest.size(); ++i) {
    const char c = i < rest.size() ? rest[i] : ',';
    if (c == '[') ++depth;
    if (c == ']' && --depth < 0)
      throw_input_error("<command line>", option + " " + a.key, "a ']' without its '[' in '" + text + "'");
    if (c == ',' && depth == 0) {
      const std::string item = rest.substr(start, i - start);
      if (item.empty()) throw_input_error("<command line>", option + " " + a.key, "empty value in '" + text + "'");
      a.values.push_back(item);
      start = i + 1;
    }
  }
  if (depth > 0) throw_input_error("<command line>", option + " " + a.key, "a '[' is not closed in '" + text + "'");
  return a;
}

std::vector<std::vector<std::string>> cross_product(const std::vector<Axis>& axes) {
  std::vector<std::vector<std::string>> out{{}};
  for (const Axis& a : axes) {
    std::vector<std::vector<std::string>> next;
    for (const auto& partial : out)
      for (const std::string& v : a.values) {
        next.push_back(partial);
        next.back().push_back(a.key + "=" + v);
      }
    out = std::move(next);
  }
  return out;
}

}  // namespace tandem
