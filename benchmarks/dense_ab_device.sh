#!/bin/bash
# One device call (<= ~6 min) for issue 9's dense path (kernels/dense.py): its GPU tests, then an A/B
# of one Llama-2-7B-shaped layer (4 copies in a CUDA graph) with one fine-tune at M = 16, 64, 256 rows:
# the tl.dot kernels against the dense path (dequantize into a bf16 scratch, then cuBLAS), in
# alternating rounds, with each stage alone, the rank-r factors' two GEMMs a linear and the
# DeltaLinear modules at the default DELTASTORE_DENSE_MIN_ROWS; printed as one table (also
# OUTDIR/dense_ab.md, rows in OUTDIR/dense_ab.json). On the device:
#   bash benchmarks/dense_ab_device.sh OUTDIR
# Knobs: CASES (default 16,64,256; e.g. 8,16,32,64,256 to find the threshold), DCFGS (the dense
# dequant configurations, bench_kernels --dense-cfgs), T (the tests' limit), BUDGET (seconds, all);
# SMOKE=1: tiny shapes, untimed (a dry run of the script on a CPU, python3 being a venv's under
# TRITON_INTERPRET=1).
# While the tests run, the kernels of every case are compiled (bench_kernels --dense-ab --warm: each
# path checked once, untimed) in the background, so the timed step finds them in Triton's cache.
set -u
out=${1:-/tmp/out}; mkdir -p "$out"
budget=${BUDGET:-340}  # seconds from the start, setup included (the lead's call: timeout_s 360+)
t0=$(date +%s)
cases=${CASES:-16,64,256}
dcfgs=${DCFGS:-'[{},{"dbc":256},{"g":true}]'}
smoke=(); [ -n "${SMOKE:-}" ] && smoke=(--smoke)
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
left() { echo $(( budget - ($(date +%s) - t0) )); }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader 2>/dev/null | head -1

say "compile (background) + GPU tests of the dense path"
timeout 150 python3 benchmarks/bench_kernels.py --dense-ab --warm --cases "$cases" --dense-cfgs "$dcfgs" ${smoke[@]+"${smoke[@]}"} > "$out/dense_warm.log" 2>&1 &
w=$!
T=${T:-100} bash benchmarks/run_device.sh tests "$out" -k "dense or delta_group" -rs > "$out/dense_tests.log" 2>&1
echo "tests rc $?"; tail -4 "$out/dense_tests.log"
wait $w; echo "compile: rc $?"; grep -E "rel err|Error|WRONG" "$out/dense_warm.log" | head -8

say "A/B: tl.dot vs dense, M = $cases"
timeout $(( $(left) > 30 ? $(left) : 30 )) python3 benchmarks/bench_kernels.py --dense-ab --copies 4 --rounds 3 --cases "$cases" \
  --dense-cfgs "$dcfgs" ${smoke[@]+"${smoke[@]}"} --out "$out/dense_ab.md" --json "$out/dense_ab.json" > "$out/dense_ab.log" 2>&1
echo "A/B rc $?"; grep -E "Error|WRONG|Traceback" "$out/dense_ab.log" | head -5
if [ -f "$out/dense_ab.md" ]; then cat "$out/dense_ab.md"; else echo "(no table: rows so far in $out/dense_ab.json)"; tail -5 "$out/dense_ab.log"; fi
say done
