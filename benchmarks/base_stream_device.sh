#!/bin/bash
# The thirty-third session's one-row base GEMV that keeps W in flight without registers: the probe
# (benchmarks/probe_base_stream.py: cuBLAS, the product's GEMV, its loop software-pipelined by cp.async, W
# by TMA tiles; alone and beside the product's delta), the base GEMV's GPU tests with the pipeline on
# (DELTASTORE_BASE_GEMV_STAGES), and the layer through the modules (ab_mma.py, one row) at
# base_gemv.STAGES / BLOCK_N / BLOCK_K configs. Carry .whl-store.
#   bash benchmarks/base_stream_device.sh OUT        PARTS=probe,tests,ab (default: all); PROBE_ARGS, CFGS, CASES, AB_ARGS, TEST_ENV
parts_default=probe,tests,ab; source benchmarks/device_preamble.sh
if has probe; then say "base stream probe"
  timeout "${P_T:-240}" python3 benchmarks/probe_base_stream.py ${PROBE_ARGS:-} 2>&1 | tee "$out/probe_base_stream.log" | tail -32; fi
test_env=${TEST_ENV:-DELTASTORE_BASE_GEMV_STAGES=3}
if has tests; then say "GPU tests of the base GEMV with $test_env"
  env $test_env N=${N:-8} T=${T:-120} bash benchmarks/gpu_tests_device.sh "$out" \
    -vv -k "${K_SEL:-base_gemv or side_stream or fused_join}" > /dev/null 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$out/gpu_tests.log" | grep -v "^tests.*PASSED" | tail -15; grep -c PASSED "$out/gpu_tests.log"; fi
cfgs=${CFGS:-'[{}, {"base_gemv.STAGES": 3}, {"base_gemv.STAGES": 4, "base_gemv.BLOCK_N": 16, "base_gemv.BLOCK_K": 128, "base_gemv.MIN_PROGRAMS": 256}, {"base_gemv.STAGES": 3, "base_gemv.BLOCK_N": 32, "base_gemv.BLOCK_K": 128, "base_gemv.MIN_PROGRAMS": 128}]'}
if has ab; then say "A/B: the base GEMV pipelined"
  timeout "${A_T:-240}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1} ${AB_ARGS:-} \
    --mma-cfgs "$cfgs" --out "$out/ab_base_stream.md" > "$out/ab_base_stream.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_base_stream.log" | tail -30; fi
say done
