#!/bin/bash
# A device call prepared in the thirtieth session, run in the thirty-first (raw_h200/s31/a): the whole GPU suite with the
# session's defaults (the summed z, the short prologue; the selection they touch passed there, the whole
# suite ran ~308 of 331 before the known-slot change's fields test), then the GEMV shrink's flat loads
# (triton_ops.GEMV_FLAT_WORDS: the shrink's words and activations each one contiguous run, the one-row
# expand's words loaded in its unpack's layout, no shared-memory
# conversion of the words; 2-bit loops 387 -> 323 and 304 -> 292 sm_90 instructions per 64 values) on and off through the
# modules, and the one-row layer group by group with it on. Carry .whl-store.
#   bash benchmarks/next_device.sh OUT          PARTS=tests,ab,groups (the default: all three, ~560 s)
parts_default=tests,ab,groups; source benchmarks/device_preamble.sh
if has tests; then say tests; whole_suite "${T:-330}"; fi
cfgs='[{}, {"triton_ops.GEMV_FLAT_WORDS": true}]'
if has ab; then say "flat loads on/off"
  timeout "${A_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,1+7,8x8} --delta-alone \
    --mma-cfgs "$cfgs" --out "$out/ab_flat.md" > "$out/ab_flat.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_flat.log" | tail -30; fi
gcfgs='[{"triton_ops.GEMV_FLAT_WORDS": true}]'
if has groups; then say "group by group, flat loads"
  timeout "${G_T:-80}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1 --by-group --timeline \
    --mma-cfgs "$gcfgs" --out "$out/ab_flat_groups.md" > "$out/ab_flat_groups.log" 2>&1
  grep -v '^ *rel err\|^    base GEMV\|Warning\|_warn_once' "$out/ab_flat_groups.log" | tail -40; fi
say done
