#!/bin/sh
# Regenerates every file of reports/plans/ (the README's tables are written from the JSON by hand).
# Usage: reports/plans/regenerate.sh [path/to/tandem]   (default: build/cli/tandem). About 25 min
# on the 2-core development machine.
set -eu
T=${1:-build/cli/tandem}
cd "$(dirname "$0")/../.."
out=reports/plans
search() {  # name scenario [--set ...]
  name=$1; scenario=$2; shift 2
  /usr/bin/time -f "$name: %e s wall, %M KB peak" "$T" plan "$scenario" "$@" -j 2 --json --csv "$out/$name.csv" \
    --write-best "$out/$name-best.yaml" > "$out/$name.json"
  "$T" report "$out/$name.json" -o "$out/$name.html" --title "tandem plan: $name"
}
search deepseek-v3-2048-h800 scenarios/deepseek-v3-2048.yaml
search deepseek-v3-2048-h200 scenarios/deepseek-v3-h200.yaml
search deepseek-v3-1024-h800 scenarios/deepseek-v3-2048.yaml --set gpus=1024
search deepseek-v2-1024-h800 scenarios/deepseek-v2-h800.yaml
/usr/bin/time -f "capacity: %e s wall" "$T" plan scenarios/deepseek-v3-2048.yaml --set cluster.nodes=512 --fix comm.sms=20 \
  --fix batch.micro_batch_sequences=1 --gpus 1024,2048,4096 --tokens 14.8e12 --days 60 -j 2 \
  > "$out/capacity-deepseek-v3-h800-60-days.txt"
