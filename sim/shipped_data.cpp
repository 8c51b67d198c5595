#include "sim/shipped_data.h"

#include <cstdlib>

namespace tandem {

std::optional<std::string_view> built_in_file(std::string_view relative) {
  for (int i = 0; i < kBuiltInFileCount; ++i)
    if (relative == kBuiltInFiles[i].path) return std::string_view(kBuiltInFiles[i].text);
  return std::nullopt;
}

std::string built_in_name(std::string_view relative) { return std::string(relative) + " (shipped)"; }

std::string shipped_data_path(const std::string& relative) {
  // A relocated checkout (scripts/gpu-verify.sh runs binaries built elsewhere) says where it is.
  for (const char* var : {"TANDEM_DATA_DIR", "TANDEM_SOURCE_DIR"})
    if (const char* dir = std::getenv(var); dir && *dir) return std::string(dir) + "/" + relative;
  return std::string(TANDEM_SOURCE_DIR) + "/" + relative;
}

}  // namespace tandem
