#!/bin/bash
# The thirty-third session's device script: the one-row base GEMV probe (benchmarks/probe_base_stream.py:
# cuBLAS, the product's GEMV, its loop software-pipelined by cp.async, W by TMA tiles; alone and beside the
# product's delta), GPU tests under an environment (TEST_ENV, e.g. DELTASTORE_BASE_GEMV_STAGES=3 or
# DELTASTORE_DENSE_SPAN=8; K_SEL picks them), and an A/B through the modules (ab_mma.py at CASES, each of
# CFGS a variant of module attributes: base_gemv.STAGES, dense.DENSE_SPAN, mma.ONE_MAX_ROWS, ...). Carry .whl-store.
# PARTS=dense: benchmarks/probe_dense_beside.py (the dense path's dequant beside the base GEMM; DENSE_ARGS).
#   bash benchmarks/base_stream_device.sh OUT        PARTS=probe,tests,ab (default), dense; PROBE_ARGS, CFGS, CASES, AB_ARGS, TEST_ENV
parts_default=probe,tests,ab; source benchmarks/device_preamble.sh
if has probe; then say "base stream probe"
  timeout "${P_T:-240}" python3 benchmarks/probe_base_stream.py ${PROBE_ARGS:-} 2>&1 | tee "$out/probe_base_stream.log" | tail -32; fi
if has dense; then say "dense dequant beside the base probe"
  timeout "${D_T:-240}" python3 benchmarks/probe_dense_beside.py ${DENSE_ARGS:-} 2>&1 | tee "$out/probe_dense_beside.log" | tail -14; fi
test_env=${TEST_ENV:-DELTASTORE_BASE_GEMV_STAGES_MIN_K=0}  # (the tests' widths are under 8192: pipelined only so)
k_sel=${K_SEL:-base_gemv or side_stream or fused_join}
if has tests; then say "GPU tests (-k $k_sel) with $test_env"
  env $test_env N=${N:-8} T=${T:-120} bash benchmarks/gpu_tests_device.sh "$out" -vv -k "$k_sel" > /dev/null 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$out/gpu_tests.log" | grep -v "^tests.*PASSED" | tail -15; grep -c PASSED "$out/gpu_tests.log"; fi
cfgs=${CFGS:-'[{}, {"base_gemv.STAGES": 1}, {"base_gemv.STAGES_MIN_K": 0}]'}
if has ab; then say "A/B through the modules at ${CASES:-1}"
  timeout "${A_T:-240}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1} ${AB_ARGS:-} \
    --mma-cfgs "$cfgs" --out "$out/ab_base_stream.md" > "$out/ab_base_stream.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_base_stream.log" | tail -30; fi
say done
