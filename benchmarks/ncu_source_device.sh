#!/bin/bash
# One device call: where the one-row GEMV expands' time goes, instruction by instruction (Nsight
# Compute's warp-state samples per SASS line), for the 4 expands of one layer (probe_gemv_ncu.py).
# Carry .whl-store.   bash benchmarks/ncu_source_device.sh OUT
# OUT gets expand.ncu-rep and expand_sass.csv.gz (the source page: SASS with its stall samples).
set -u
out=${1:-/tmp/out}; mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
timeout "${NT:-200}" ncu --clock-control none --kernel-name regex:'gemv_expand' --launch-skip 8 --launch-count 4 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -o "$out/expand" \
  python3 benchmarks/probe_gemv_ncu.py --rows 1 --rounds 3 > "$out/ncu.log" 2>&1; echo "ncu rc $?"; tail -3 "$out/ncu.log"
ncu --import "$out/expand.ncu-rep" --page source --csv --print-source sass > "$out/expand_sass.csv" 2> "$out/import.err"
echo "import rc $?"; head -c 600 "$out/expand_sass.csv"; wc -l "$out/expand_sass.csv"; gzip -9 "$out/expand_sass.csv"; ls -la "$out"
