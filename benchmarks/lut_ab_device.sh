#!/bin/bash
# The table-lookup shrink (kernels/lut.py, off by default) on the H200: the GPU tests of the one-row paths
# it changes (with DELTASTORE_LUT_SHRINK=1 in the environment they take it), then the layer through the
# modules without it and with it (ab_mma.py: one Llama-2-7B layer as a CUDA graph over 4 copies; the lookup
# serves one row of one fine-tune). Carry .whl-store.
#   bash benchmarks/lut_ab_device.sh OUT          PARTS=tests,ab (default: both, ~420 s); CASES, CFGS: ab_mma's
parts_default=tests,ab; source benchmarks/device_preamble.sh
if has tests; then say "GPU tests of the one-row paths"
  N=${N:-12} T=${T:-200} bash benchmarks/gpu_tests_device.sh "$out" \
    -vv -k "${K_SEL:-lut or side_stream or known_slot or z_atomic or lazy or pdl or gemv_atomic or flat or zero_in or fused_join}" > /dev/null 2>&1
  grep -E "FAILED|ERROR|passed|failed" "$out/gpu_tests.log" | grep -v "^tests.*PASSED" | tail -15; grep -c PASSED "$out/gpu_tests.log"; fi
cfgs=${CFGS:-'[{}, {"lut.ENABLED": true}]'}
if has ab; then say "A/B: the lookup shrink off / on"
  timeout "${A_T:-200}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1} --delta-alone \
    --mma-cfgs "$cfgs" --out "$out/ab_lut.md" > "$out/ab_lut.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_lut.log" | tail -30; fi
say done
