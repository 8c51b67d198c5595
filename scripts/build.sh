#!/usr/bin/env bash
# Configures and builds tandem into build/ (or $1). Extra arguments go to CMake.
# The CUDA backend is built when /usr/local/cuda/bin/nvcc exists (no GPU needed to build).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-build}"
shift || true
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTANDEM_WERROR=ON "$@" >/dev/null
cmake --build "$dir" -j "$(nproc)"
