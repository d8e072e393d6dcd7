#!/bin/bash
# One device call (thirtieth session): the GEMV shrink's shorter prologue (triton_ops.GEMV_KNOWN_SLOT:
# the known slot's entries beside the row block, a one-row batch's x at offset 0, no exit branch for
# the compiler to sink the entries' loads below: two memory round trips before the first product
# instead of four), first on the GPU.
#   1. A/B through the modules, on and off in one process: one row of one fine-tune (the known slot),
#      one fine-tune's row beside 7 base rows (ids on the host: known), 8 rows over 8 fine-tunes (no
#      known slot: the empty-running programs only), with the deltas alone;
#      beside them the one-row base GEMV at 1,024 programs for the N = 4096 linears (base_gemv.MIN_PROGRAMS,
#      prepared in next_device.sh);
#   2. the one-row layer group by group with the new default, and one traced graph replay;
#   3. the GPU tests the change touches (the prologue's bit-for-bit test, the GEMV paths, PDL, the side stream);
#      TESTS=all: the whole GPU suite (gpu_tests_device.sh), -v so a cut run still names each result.
# Carry .whl-store.  PARTS=ab,groups,tests (the default: all three) picks some, in that order;
# CFGS: the A/B's variants (ab_mma.py --mma-cfgs); GCFGS: the group-by-group run's (its first).
#   bash benchmarks/known_device.sh OUT
#   PARTS=ab,groups,tests TESTS=all T=300 CASES=1,1+7,8x8 ROUNDS=3 A_T=200 \
#     CFGS='[{}, {"triton_ops.GEMV_Z_ATOMIC": true}, {"triton_ops.GEMV_KNOWN_SLOT": false}]' \
#     GCFGS='[{"triton_ops.GEMV_Z_ATOMIC": true}]' bash benchmarks/known_device.sh OUT   (the second call)
parts_default=ab,groups,tests; source benchmarks/device_preamble.sh
# (no braces in a ${VAR:-default}: bash ends the expansion at the JSON's first closing brace)
cfgs=${CFGS:-}; [ -n "$cfgs" ] || cfgs='[{}, {"triton_ops.GEMV_KNOWN_SLOT": false}, {"base_gemv.MIN_PROGRAMS": 1024}]'
gcfgs=${GCFGS:-}; [ -n "$gcfgs" ] || gcfgs='[{}]'
ab() { say "known slot on/off"
  timeout "${A_T:-260}" python3 benchmarks/ab_mma.py --rounds ${ROUNDS:-5} --copies 4 --cases ${CASES:-1,1+7,8x8} --delta-alone \
    --mma-cfgs "$cfgs" --out "$out/ab_known.md" > "$out/ab_known.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_known.log" | tail -30; }
tests() { say tests
  if [ "${TESTS:-}" = all ]; then N=${N:-12} T=${T:-330} bash benchmarks/gpu_tests_device.sh "$out" -v > /dev/null 2>&1
  else N=${N:-12} T=${T:-150} bash benchmarks/gpu_tests_device.sh "$out" \
    -k "known or test_ops or gemv_atomic or pdl or side_stream or zero_in_kernels or fused_join" > /dev/null 2>&1; fi
  mv "$out/gpu_tests.log" "$out/known_tests.log"; grep -v "Warning\|warner" "$out/known_tests.log" | grep -v PASSED | tail -40; }
case $parts in ,tests*) tests;; esac
if has ab; then ab; fi
if has groups; then say "group by group"
  timeout "${G_T:-90}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1 --by-group --timeline --mma-cfgs "$gcfgs" \
    --out "$out/ab_known_groups.md" > "$out/ab_known_groups.log" 2>&1
  grep -v '^ *rel err\|^    base GEMV\|Warning\|_warn_once' "$out/ab_known_groups.log" | tail -40; fi
case $parts in ,tests*) ;; *) if has tests; then tests; fi;; esac
say done
