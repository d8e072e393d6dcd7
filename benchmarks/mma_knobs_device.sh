#!/bin/bash
# The device call prepared for the tensor-core kernels' knobs that the thirty-fifth session wrote after its device
# time was spent (kernels/mma.py: PDL, HOIST, SHRINK_MAXNREG; each off, each compiled for sm_90 on the dev VM,
# none run on a GPU yet), and for MIN_ROWS 1 (several fine-tunes at one row each on these kernels), whose lazy,
# side-stream and CUDA-graph tests have not run on a GPU either. One call, ~500 s (setup ~40, tests 200, A/B 260: the
# 600 s a command may run). Carry .whl-store.
#   bash benchmarks/mma_knobs_device.sh OUT          PARTS=tests,ab (default), few; CFGS, CASES, K_SEL to narrow
# tests: the GPU tests that touch these kernels (211 collected on the dev VM; test_mma's six knob tests among them;
#        twelve workers, cut at T seconds: the count of PASSED lines printed says how far they got).
# ab:    ab_mma.py through the modules users get, each knob alone and PDL + HOIST together, at one fine-tune's
#        2 and 16 rows and the multi-tenant goals' 32 over 8 and 64 over 32 (issue 9's table).
# few:   the case not yet measured on these kernels: a few rows over many fine-tunes (2 over 32, 8 over 32),
#        the defaults against the GEMV kernels (mma.MIN_ROWS 9: below 9 rows a fine-tune, GEMV as before).
# Then turn on what wins, with its figure in the knob's comment, and run ncu at 16 rows with it
# (KRE='_(shrink|expand)_kernel' bash benchmarks/ncu_device.sh OUT 16).
parts_default=tests,ab; source benchmarks/device_preamble.sh
k_sel=${K_SEL:-mma or lazy or side_stream or graph}
if has tests; then say "GPU tests (-k $k_sel)"
  N=${N:-12} T=${T:-200} bash benchmarks/gpu_tests_device.sh "$out" -vv -k "$k_sel" > /dev/null 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$out/gpu_tests.log" | grep -v "^tests.*PASSED" | tail -15; grep -c PASSED "$out/gpu_tests.log"; fi
cfgs=${CFGS:-'[{}, {"mma.PDL": true}, {"mma.HOIST": true}, {"mma.SHRINK_MAXNREG": 80}, {"mma.PDL": true, "mma.HOIST": true}]'}
if has ab; then say "knobs A/B at ${CASES:-2,16,32x8,64x32}"
  timeout "${A_T:-260}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-2,16,32x8,64x32} \
    --mma-cfgs "$cfgs" --out "$out/ab_knobs.md" > "$out/ab_knobs.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_knobs.log" | tail -40; fi
if has few; then say "few rows over many fine-tunes"
  timeout "${F_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${F_CASES:-2x32,8x32} \
    --mma-cfgs '[{}, {"mma.MIN_ROWS": 9}]' --out "$out/ab_few.md" > "$out/ab_few.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_few.log" | tail -20; fi
say done
