// `tandem schedule <scenario> [--set k=v]... [--svg FILE] [--json] [--unit-costs F,B,W,FB]`
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct ScheduleOptions {
  std::string path;
  std::vector<std::string> overrides;
  std::string svg;         // write the unit-cost timeline here
  bool json = false;
  std::string unit_costs;  // "F,B,W,FB"; default 1,2,1,3 (F&B = F + B: no overlap gain)
};

Result<nlohmann::json> schedule(const ScheduleOptions& o, std::string& text);

}  // namespace tandem
