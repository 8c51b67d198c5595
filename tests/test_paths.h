// Paths to the repository's cards from tests.
#pragma once

#include <cstdlib>
#include <string>

namespace tandem::test {

// The repository root: the environment's TANDEM_SOURCE_DIR when set (test binaries built on one
// machine and run from another checkout, as scripts/gpu-verify.sh does on a GPU machine), else the
// source directory the tests were configured from.
inline std::string source_dir() {
  if (const char* dir = std::getenv("TANDEM_SOURCE_DIR"); dir && *dir) return dir;
  return TANDEM_SOURCE_DIR;
}

inline std::string repo(const std::string& rel) { return source_dir() + "/" + rel; }

}  // namespace tandem::test
