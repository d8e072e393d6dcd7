# Sourced by the device scripts (benchmarks/*_device.sh) after they set parts_default (optional):
#   parts_default=tests,ab,groups; source benchmarks/device_preamble.sh
# It takes the script's own arguments ($1: the output folder, default /tmp/out), sets up the device
# machine (run_device.sh setup: the carried wheels, /tmp/ds/env), and defines:
#   parts / has NAME  the parts to run: PARTS from the environment, else parts_default (has: one of them?)
#   out               the output folder, made
#   say TEXT          TEXT after the seconds since the setup
#   whole_suite T     the whole GPU suite (gpu_tests_device.sh -vv, N workers, default 12) cut at T seconds into
#                     $out/suite.log; prints its failures and summary lines and how many tests passed
set -u
parts=",${PARTS:-${parts_default:-}},"; has() { case $parts in *,$1,*) return 0;; esac; return 1; }
out=${1:-/tmp/out}; mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
whole_suite() {
  N=${N:-12} T=$1 bash benchmarks/gpu_tests_device.sh "$out" -vv > /dev/null 2>&1; mv "$out/gpu_tests.log" "$out/suite.log"
  grep -E "FAILED|ERROR|passed|failed" "$out/suite.log" | grep -v "^tests.*PASSED" | tail -25; grep -c PASSED "$out/suite.log"
}
