#!/usr/bin/env bash
# Builds, on this machine (nvcc, no GPU needed), everything scripts/gpu-verify.sh runs on a GPU
# machine, into .gpu-pack/: the GPU checks (tandem_gpu_tests, gpu_probe_test, bench_command_test)
# and the CLI (benchmarks, execute --backend cuda) with its CUDA backend module, plus the shared
# libraries they load that such a machine may lack (yaml-cpp and the like). Why: the device
# tool's GPU machines reach no package registry, so tandem's Debian dependencies cannot be
# installed there, and a build there would spend the GPU's minutes on compiling. Not packed:
# glibc and the C++ runtime (the GPU machine's own) and cuBLAS / cuBLASLt / NCCL (hundreds of MB;
# gpu-verify.sh finds the machine's own, which match its driver).
#
# Usage: scripts/gpu-pack.sh            then carry .gpu-pack (device tool: carry [".gpu-pack"])
# Built without the simulator and without MPI (neither is needed to verify the CUDA backend), in
# build-gpu-pack/. Ends with the pack's size and the libraries it holds. The binaries need glibc >= 2.34
# and the libstdc++ of GCC >= 12 there (Ubuntu 22.04 or later; gpu-verify.sh checks with ldd).
set -euo pipefail
cd "$(dirname "$0")/.."
build="build-gpu-pack"
pack=.gpu-pack

nvcc=/usr/local/cuda/bin/nvcc
[ -x "$nvcc" ] || nvcc=$(command -v nvcc) || {
  echo "gpu-pack: no nvcc here: the GPU checks cannot be built" >&2
  exit 2
}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTANDEM_WERROR=ON -DTANDEM_CUDA=ON \
  -DTANDEM_SIM=OFF -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target tandem_gpu_tests bench_command_test gpu_probe_test tandem

rm -rf "$pack"
mkdir -p "$pack/bin" "$pack/lib"
# cli/libtandem_cuda.so: the CUDA backend module the CLI, gpu_probe_test and bench_command_test
# open at run time (exec/cuda_backend.h); they find it beside themselves in bin/.
for b in tests/tandem_gpu_tests tests/gpu_probe_test tests/bench_command_test cli/tandem cli/libtandem_cuda.so; do
  [ -f "$build/$b" ] || { echo "gpu-pack: $build/$b was not built" >&2; exit 1; }
  cp "$build/$b" "$pack/bin/"
done
strip --strip-debug "$pack"/bin/*

# Every library the binaries load, by its resolved path, except the ones named above.
ldd "$pack"/bin/* | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    case "$name" in
      libc.so.* | libm.so.* | libdl.so.* | librt.so.* | libpthread.so.* | ld-linux*.so.* | \
        libstdc++.so.* | libgcc_s.so.* | libcuda.so.* | libcublas.so.* | libcublasLt.so.* | libnccl.so.*) ;;
      *) cp -L "$path" "$pack/lib/$name" ;;
    esac
  done
{
  echo "built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)') on $(date -u +%F)"
  "$nvcc" --version | tail -1
} >"$pack/BUILT"
du -sh "$pack"
ls "$pack/lib"
