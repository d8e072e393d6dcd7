#!/bin/bash
# The thirty-first session's last device call: the whole GPU suite with the flat loads on
# (triton_ops.GEMV_FLAT_WORDS), then the fused join (join.ENABLED: the base GEMV's and the expand's
# last program adds d into y, no add launch) A/B now that it keeps the shrink's summed z (before, a
# fused join fell back to split z's, which the summed z had beaten by ~4 us a layer). Carry .whl-store.
#   bash benchmarks/join_zsum_device.sh OUT      PARTS=tests,ab (default: both, ~470 s)
parts_default=tests,ab; source benchmarks/device_preamble.sh
if has tests; then say tests; whole_suite "${T:-320}"; fi
cfgs='[{}, {"join.ENABLED": true}]'
if has ab; then say "fused join on/off"
  timeout "${A_T:-130}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,1+7} --delta-alone \
    --mma-cfgs "$cfgs" --out "$out/ab_join.md" > "$out/ab_join.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_join.log" | tail -30; fi
say done
