#!/bin/bash
# The next device call, prepared in the twenty-ninth session (not yet run): the whole GPU suite first (the
# twenty-ninth session's last changes ran under the interpreter only: test_l2_knobs, the join's KernelError),
# then one more one-row A/B the session's traced replays suggest. The o and down base GEMVs (N = 4096: 512
# programs of 8 columns, ~4 an SM) run at 2.4-2.9 TB/s against q/k/v's ~3.3, leaving SMs idle; more programs
# (base_gemv.MIN_PROGRAMS 1024: 4 columns each) may speed those bases, or may fill the SMs and make their
# delta shrinks wait as q/k/v's do (~18 us): measure both ways, group by group. Carry .whl-store.
#   bash benchmarks/next_device.sh OUT          PARTS=tests,ab,groups (the default: all three, ~540 s)
set -u
parts=",${PARTS:-tests,ab,groups},"; has() { case $parts in *,$1,*) return 0;; esac; return 1; }
out=${1:-/tmp/out}; mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
if has tests; then say tests
  N=${N:-12} T=${T:-330} bash benchmarks/gpu_tests_device.sh "$out" > /dev/null 2>&1; mv "$out/gpu_tests.log" "$out/suite.log"
  tail -25 "$out/suite.log"; fi
if has ab; then say "base GEMV programs, one row"
  timeout "${A_T:-120}" python3 benchmarks/ab_mma.py --rounds 5 --copies 4 --cases 1 --out "$out/ab_programs.md" \
    --mma-cfgs '[{}, {"base_gemv.MIN_PROGRAMS": 1024}]' > "$out/ab_programs.log" 2>&1
  grep '^|\|base alone\|Error\|error' "$out/ab_programs.log" | tail -8; fi
if has groups; then say "group by group, MIN_PROGRAMS 1024"
  timeout "${G_T:-80}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1 --by-group --timeline \
    --mma-cfgs '[{"base_gemv.MIN_PROGRAMS": 1024}]' --out "$out/ab_programs_groups.md" > "$out/ab_programs_groups.log" 2>&1
  grep -v '^ *rel err\|^    base GEMV\|Warning\|_warn_once' "$out/ab_programs_groups.log" | tail -40; fi
say done
