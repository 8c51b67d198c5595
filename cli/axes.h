// Axes of a sweep or a plan search: a scenario key and the values it takes, from `key=v1,v2,...`
// (commas inside [...] belong to a list value, e.g. schedule.stage_layers=[4,4,...]).
#pragma once

#include <string>
#include <vector>

namespace tandem {

struct Axis {
  std::string key;
  std::vector<std::string> values;
};

// Throws InputException (<command line>, `option`) on a malformed text or an empty value.
Axis parse_axis(const std::string& text, const std::string& option);

// Every combination of the axes' values, the last axis fastest; each as "key=value" overrides.
std::vector<std::vector<std::string>> cross_product(const std::vector<Axis>& axes);

}  // namespace tandem
