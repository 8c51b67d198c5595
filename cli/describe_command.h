// `tandem describe <scenario | model card | cluster card> [--set k=v]... [--json]`
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct DescribeOptions {
  std::string path;
  std::vector<std::string> overrides;
  bool json = false;
  int64_t seq_len = 0;     // a bare model card's sequence length (0: not given, 4096); a scenario has its own
  bool ops = false;        // print the per-op table of one layer of each kind
};

// Builds the description; text goes to `text`, the machine-readable form is returned.
Result<nlohmann::json> describe(const DescribeOptions& o, std::string& text);

}  // namespace tandem
