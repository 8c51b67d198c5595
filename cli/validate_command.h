// `tandem validate [--out FILE] [--json]`: the calibrated predictions beside the measurements
// they are checked against — reports/validation/README.md is this command's output.
//
// Kernel level, against DeepSeek's profiler trace of V3 training (what `tandem calibrate`
// recorded in sim/calibration/deepseek-v3-h800-train.yaml, so the trace itself is not needed): per task
// kind the measured time, the calibrated model's, and the simulated default scenario's on its
// middle pipeline rank; the middle rank's overlapped F&B chunk pair against the trace's span.
// Step level, against published end-to-end figures that no parameter was fitted to: the V3
// step against 180K H800 GPU-hours per trillion tokens (19.9 s), V2 against 172.8K. Every gap
// over 5% is broken down in the model's own terms. Each simulation runs as a child process
// (SimGrid allows one engine per process).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct ValidateOptions {
  std::string self;  // the tandem executable, for the child simulations
  std::string out;   // the Markdown page ("": stdout only)
  bool json = false;
};

Result<nlohmann::json> validate_command(const ValidateOptions& o, std::string& text);

}  // namespace tandem
