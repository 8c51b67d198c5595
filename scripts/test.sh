#!/usr/bin/env bash
# The whole test suite: install, build, run every test; then an ASan+UBSan build without CUDA
# runs the card, workload, scenario, fuzz and executor-library tests again. GPU tests skip
# without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --tests
# The browser checks of the HTML reports must run here, not skip.
export TANDEM_REQUIRE_BROWSER=1
jobs="$(nproc)"

echo "== build (CUDA backend if nvcc is present) and test"
scripts/build.sh build
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== sanitizer build (ASan + UBSan, -DTANDEM_CUDA=OFF) and test"
scripts/build.sh build-asan -DTANDEM_SANITIZE=ON -DTANDEM_CUDA=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -L '^(cards|workload|scenario|schedule|fuzz|hostile|topology|calibrate|fp8|ops|comm|comm_mpi)$'
