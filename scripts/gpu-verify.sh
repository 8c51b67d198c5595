#!/usr/bin/env bash
# The CUDA backend's verification on a GPU machine, in one call: every GPU check, the benchmarks
# and `tandem execute --backend cuda`, from the binaries scripts/gpu-pack.sh built elsewhere
# (.gpu-pack/), each bounded in time, the whole run bounded by a budget.
#
# Usage (repository root):  scripts/gpu-verify.sh [item ...]
#   items: probe, the checks of exec/backends/cuda/README.md (quant gemm ... exec_cuda fp8_exhaustive),
#          bench_command, bench-gemm, bench-quant, bench-moe-layer, execute. Default: all, in the
#          order below (short, telling checks first; the 2^32 sweep last).
#   VERIFY_BUDGET_S   seconds for the whole run (default 540); an item gets what is left of it, at
#                     most ITEM_TIMEOUT_S (default 300); items not started in time are "not run".
#   OUT               where the results go (default ./gpu-results): summary.txt (one line per
#                     item: PASS / FAIL / SKIP / TIMEOUT / NOT RUN, seconds), log.txt (everything
#                     printed), env.txt (GPU, driver, libraries found), bench-gemm.json,
#                     bench-quant.json, bench-moe-layer.json, exec-cuda.json, exec-cuda-trace.json.
# Exit: 0 when every item that ran passed (SKIP counts as not passed when a GPU is present), 1
# otherwise, 2 when .gpu-pack is missing or its binaries cannot load.
# With the device tool:  run(command="scripts/gpu-verify.sh", carry=[".gpu-pack"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
pack="$PWD/.gpu-pack"
out="${OUT:-$PWD/gpu-results}"
budget="${VERIFY_BUDGET_S:-540}"
item_timeout="${ITEM_TIMEOUT_S:-300}"
mkdir -p "$out"
summary="$out/summary.txt"
log="$out/log.txt"
: >"$summary"
: >"$log"
start=$(date +%s)

if [ ! -x "$pack/bin/tandem_gpu_tests" ]; then
  echo "gpu-verify: $pack/bin/tandem_gpu_tests is missing: run scripts/gpu-pack.sh on a machine with nvcc and carry .gpu-pack" | tee -a "$summary" >&2
  exit 2
fi

# The directory holding library $1: the dynamic linker's cache, the CUDA toolkit, then Python's
# NVIDIA wheels (PyTorch's cuBLAS / NCCL), then anywhere on the root file system (a minute at most).
find_lib_dir() {
  local lib="$1" path d
  path=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
  [ -n "$path" ] && { dirname "$path"; return 0; }
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -e "$d/$lib" ] && { echo "$d"; return 0; }
  done
  for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    path=$(find "$d/nvidia" -name "$lib" -print -quit 2>/dev/null)
    [ -n "$path" ] && { dirname "$path"; return 0; }
  done
  path=$(timeout 60 find / -xdev -name "$lib" -not -path '/proc/*' -print -quit 2>/dev/null)
  [ -n "$path" ] && { dirname "$path"; return 0; }
  return 1
}

libpath="$pack/lib"
# The CUDA libraries the pack leaves to this machine, by the sonames the binaries were linked with.
needed=$(ldd "$pack"/bin/* 2>/dev/null | awk '$1 ~ /^lib(cublas|cublasLt|nccl)\.so/ {print $1}' | sort -u)
{
  echo "== pack"
  cat "$pack/BUILT" 2>/dev/null
  echo "== GPU"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  echo "== libraries"
  for lib in $needed; do
    if d=$(find_lib_dir "$lib"); then
      echo "$lib: $d"
      case ":$libpath:" in *":$d:"*) ;; *) libpath="$libpath:$d" ;; esac
    else
      echo "$lib: NOT FOUND"
    fi
  done
} >"$out/env.txt" 2>&1
export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TANDEM_SOURCE_DIR="$PWD"  # the tests' cards, from this checkout (tests/test_paths.h)
linked=$(ldd "$pack"/bin/* 2>&1)
printf 'LD_LIBRARY_PATH=%s\n== ldd\n%s\n' "$LD_LIBRARY_PATH" "$linked" >>"$out/env.txt"
if grep -q -e "=> not found" -e "version .* not found" <<<"$linked"; then
  echo "gpu-verify: the binaries cannot load (env.txt):" | tee -a "$summary" >&2
  grep -e "=> not found" -e "version .* not found" <<<"$linked" | sort -u | tee -a "$summary" >&2
  exit 2
fi

gpu_present=0
"$pack/bin/gpu_probe_test" >/dev/null 2>&1 && gpu_present=1

checks="quant gemm sm_target nccl blas embedding cross_entropy adamw elementwise router rmsnorm swiglu linear ffn
        attention virtual_ranks nccl_comm permute moe_layer head mtp balance device_params zero1 blocks exec_cuda"
# A check the binary has that the list above does not name yet runs too (after the listed ones).
for c in $("$pack/bin/tandem_gpu_tests" 2>/dev/null | sed -n 's/^usage:.*checks://p'); do
  case " $(echo $checks) fp8_exhaustive " in *" $c "*) ;; *) checks="$checks $c" ;; esac
done
if [ $# -gt 0 ]; then
  items="$*"
else
  items="probe $checks bench_command bench-gemm bench-quant bench-moe-layer execute fp8_exhaustive"
fi

failed=0
for item in $items; do
  left=$((budget - ($(date +%s) - start)))
  if [ "$left" -lt 10 ]; then
    printf '%-18s NOT RUN (budget of %ss spent)\n' "$item" "$budget" >>"$summary"
    failed=1
    continue
  fi
  limit=$((left < item_timeout ? left : item_timeout))
  json=""
  case "$item" in
    probe) cmd=("$pack/bin/gpu_probe_test") ;;
    bench_command) cmd=("$pack/bin/bench_command_test") ;;
    bench-*)
      json="$out/$item.json"
      cmd=("$pack/bin/tandem" bench "${item#bench-}" --json) ;;
    execute)
      json="$out/exec-cuda.json"
      cmd=("$pack/bin/tandem" execute scenarios/tiny-dualpipe.yaml --backend cuda --steps 3 --json
           --trace "$out/exec-cuda-trace.json") ;;
    *) cmd=("$pack/bin/tandem_gpu_tests" "$item") ;;
  esac
  echo "===== $item: ${cmd[*]} (limit ${limit}s)" >>"$log"
  t0=$(date +%s.%N)
  if [ -n "$json" ]; then
    timeout --kill-after=10 "$limit" "${cmd[@]}" >"$json" 2>>"$log"
  else
    timeout --kill-after=10 "$limit" "${cmd[@]}" >>"$log" 2>&1
  fi
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  case "$rc" in
    0) status=PASS ;;
    77) status=SKIP ;;
    124 | 137) status=TIMEOUT ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  [ "$status" = PASS ] || { [ "$status" = SKIP ] && [ "$gpu_present" = 0 ]; } || failed=1
  printf '%-18s %-14s %8ss\n' "$item" "$status" "$secs" >>"$summary"
  echo "===== $item: $status in ${secs}s" >>"$log"
done

echo "gpu present: $([ $gpu_present = 1 ] && echo yes || echo no); total $(($(date +%s) - start))s" >>"$summary"
cat "$summary"
exit "$failed"
