#!/usr/bin/env bash
# Re-derives sim/calibration/deepseek-v3-h800-train.yaml from DeepSeek's published profiler trace
# (kernel-level measurements of DeepSeek-V3 training on H800; see its README). Needs the trace,
# which tandem does not carry: TRACE=path/to/train.json, default ../shared/data/deepseek-profile-data/train.json.
set -euo pipefail
cd "$(dirname "$0")/.."
trace="${TRACE:-../shared/data/deepseek-profile-data/train.json}"
tandem="${TANDEM:-build/cli/tandem}"
"$tandem" calibrate "$trace" --scenario scenarios/deepseek-v3-2048.yaml \
  --name deepseek-v3-h800-train \
  --source "DeepSeek's PyTorch-profiler trace of DeepSeek-V3 training: one DualPipe forward chunk overlapped with one backward chunk, 4 MoE layers each, EP64, 4096 tokens, H800 (github.com/deepseek-ai/profile-data, commit 449602428a1b023acb8a505d4f34fef536535db6, train.json). The repository states no licence; it is public measurement data, carried here only as the figures derived from it." \
  --out sim/calibration/deepseek-v3-h800-train.yaml "$@"
