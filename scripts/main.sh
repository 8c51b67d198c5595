#!/usr/bin/env bash
# The main job: install, build, then predict one training step of the default DeepSeek-V3 /
# 2048-GPU scenario. Extra arguments go to the tandem command (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh build
build/cli/tandem simulate scenarios/deepseek-v3-2048.yaml "$@"
