#!/bin/sh
# The simulator's speed and memory at scale (issue: every GPU simulated in seconds).
# DeepSeek-V3, skewed routing 0.5, the grouped tier (every GPU simulated), weak scaling: the
# default plan (PP16 DualPipe, EP64, or EP = DP below 1024 GPUs) with DP = GPUs/16 and 7.5
# sequences per GPU, so every pipeline runs the default's 120 micro-batches and each GPU the same
# tasks. Below 1024 GPUs the plan needs more than 80 GB (fewer EP ranks hold more experts): HBM is
# raised to 1 TB there, as this measures the simulator, not the plan.
# Usage: bench/sim_scaling.sh [tandem] [GPU counts...]   (default: build/cli/tandem 128 256 512 1024 2048)
set -eu
T=${1:-build/cli/tandem}
[ $# -gt 0 ] && shift
COUNTS=${*:-128 256 512 1024 2048}
cd "$(dirname "$0")/.."
printf '%6s %10s %10s %12s %12s\n' gpus step_s sim_wall_s wall_s peak_rss_MB
for n in $COUNTS; do
  seqs=$((n * 15 / 2))
  ep=$((n / 16)); [ "$ep" -gt 64 ] && ep=64
  hbm=80; [ "$n" -lt 1024 ] && hbm=1000
  /usr/bin/time -f '%e %M' -o /tmp/sim_scaling.time "$T" simulate scenarios/deepseek-v3-2048.yaml --json \
    --set gpus="$n" --set cluster.nodes=$(( (n + 7) / 8 )) --set plan.ep="$ep" --set cluster.gpu.hbm_gbytes="$hbm" --set batch.global_sequences="$seqs" --set routing.model=skewed --set routing.skew=0.5 \
    --fidelity grouped > /tmp/sim_scaling.json
  python3 -c "
import json,sys
d=json.load(open('/tmp/sim_scaling.json')); w,m=open('/tmp/sim_scaling.time').read().split()
print('%6d %10.4f %10.2f %12s %12.0f' % ($n, d['step_time_s'], d.get('sim_wall_s',0), w, int(m)/1024))"
done
