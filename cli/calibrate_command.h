// `tandem calibrate TRACE... --scenario S [--set k=v]... [--rules R] [--out FILE] [--json]`:
// measured traces (a PyTorch profiler trace, tandem's own `execute --trace`) to a calibration
// overlay for the simulator (sim/calibrate.h), with the evidence printed.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct CalibrateOptions {
  std::vector<std::string> traces;
  std::string scenario;
  std::vector<std::string> overrides;
  std::string rules;  // default: the shipped sim/calibration/kernel-rules.yaml
  std::string out;    // the overlay file to write ("" : none)
  std::string name;   // the overlay's name ("" : "calibrated from N traces")
  std::vector<std::string> source;  // provenance lines put first (where the traces come from)
  bool json = false;
};

Result<nlohmann::json> calibrate_command(const CalibrateOptions& o, std::string& text);

}  // namespace tandem
