// `tandem compare A B [--top N] [--json]`: two traces of one scenario, task by task
// (reports/trace_compare.h).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct CompareOptions {
  std::string a, b;  // trace files (simulate --trace, execute --trace)
  int top = 10;      // tasks that differ most, listed
  bool json = false;
};

Result<nlohmann::json> compare_command(const CompareOptions& o, std::string& text);

}  // namespace tandem
