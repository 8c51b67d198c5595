// Paths to the repository's cards from tests.
#pragma once

#include <string>

namespace tandem::test {

inline std::string repo(const std::string& rel) { return std::string(TANDEM_SOURCE_DIR) + "/" + rel; }

}  // namespace tandem::test
