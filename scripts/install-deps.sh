#!/usr/bin/env bash
# Installs the Debian packages tandem builds with. Idempotent; needs root (or sudo).
set -euo pipefail
packages=(
  build-essential cmake pkg-config
  libsimgrid-dev            # sim/: SimGrid 3.32
  libboost-graph-dev        # topologies/: Boost.Graph
  libcli11-dev              # cli/: CLI11
  catch2                    # tests/: Catch2 v2
  libeigen3-dev             # exec/cpu: Eigen
  libyaml-cpp-dev           # cards
  nlohmann-json3-dev        # JSON output
  libopenmpi-dev openmpi-bin  # exec/comm: the MPI world (optional; `mpirun -np P tandem execute`)
)
# --tests: also what the test suite needs beyond the build: Chromium, to load the HTML reports
# headless, and Python 3, which drives it (tests/reports/browser_test.py); procps (pgrep: the
# plan test checks that an interrupted search leaves no simulation running); time (/usr/bin/time:
# the CLI fuzzer's peak memory per case).
if [ "${1:-}" = "--tests" ]; then
  packages+=(chromium python3 procps time)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
