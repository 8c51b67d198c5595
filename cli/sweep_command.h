// `tandem sweep <scenario> --vary key=v1,v2,... [--vary ...] [--set k=v]... [--csv FILE] [--json]`
//
// Runs `tandem simulate` for every combination of the varied keys (the cross product), each in
// its own process (SimGrid allows one engine per process), with a progress bar on stderr. A
// combination the scenario rejects (infeasible plan, memory above HBM) is a row with its reason,
// not a failure of the sweep.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct SweepOptions {
  std::string path;
  std::vector<std::string> vary;       // "key=v1,v2,..."
  std::vector<std::string> overrides;  // fixed --set for every run
  std::string csv;
  std::string fidelity = "auto";
  bool json = false;
  std::string self;                    // the tandem executable
};

Result<nlohmann::json> sweep(const SweepOptions& o, std::string& text);

}  // namespace tandem
