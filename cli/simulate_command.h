// `tandem simulate <scenario> [--set k=v]... [--trace FILE] [--json] [--fidelity TIER] [--progress]`
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct SimulateOptions {
  std::string path;
  std::vector<std::string> overrides;
  std::string trace;             // Perfetto JSON of the first trace_gpus GPUs
  int trace_gpus = 16;
  std::string fidelity = "auto";
  std::vector<std::string> calibration;  // a calibration file and/or `tandem bench --json` outputs
  bool json = false;
  bool progress = false;
};

Result<nlohmann::json> simulate_command(const SimulateOptions& o, std::string& text);

}  // namespace tandem
