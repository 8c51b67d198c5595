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
  std::string trace;             // Perfetto JSON: one GPU per pipeline rank, or GPUs 0..trace_gpus-1
  int trace_gpus = 0;
  std::string fidelity = "auto";
  std::vector<std::string> calibration;  // a calibration file and/or `tandem bench --json` outputs
  double training_tokens = 14.8e12;  // the budget days and cost are given for (DeepSeek-V3's pre-training)
  bool json = false;
  bool progress = false;
};

Result<nlohmann::json> simulate_command(const SimulateOptions& o, std::string& text);

}  // namespace tandem
