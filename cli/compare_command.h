// `tandem compare A B [--top N] [--json]`: two traces of one scenario, task by task
// (reports/trace_compare.h). B may be a profiler trace of real training (PyTorch's Chrome trace):
// then --scenario gives the shapes, the kernel rules classify its kernels into task kinds as
// `tandem calibrate` does, and the kinds align (no task identities in a profiler trace).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct CompareOptions {
  std::string a, b;  // trace files (simulate --trace, execute --trace; B also a profiler trace)
  int top = 10;      // tasks that differ most, listed
  std::string scenario;                // B a profiler trace: the scenario A is of (its shapes)
  std::vector<std::string> overrides;  // --set for that scenario
  std::string rules;                   // kernel rules (default: the shipped ones)
  bool json = false;
};

Result<nlohmann::json> compare_command(const CompareOptions& o, std::string& text);

}  // namespace tandem
