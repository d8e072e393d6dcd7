#!/bin/bash
# The thirty-first session's check of the GEMV flat loads (triton_ops.GEMV_FLAT_WORDS) after the
# whole GPU suite (next_device.sh, raw_h200/s31/a) failed 3 of test_flat_words' 4 cases: how far flat
# moves the output from the default loads with z summed by atomics and kept apart (probe_flat_diff.py),
# the suite's 4 tests its 330 s did not reach, and 8 rows over 8 fine-tunes with flat on and off
# (next_device.sh's A/B ran out of time before that case). Carry .whl-store.
#   bash benchmarks/flat_device.sh OUT          PARTS=probe,rest,ab (default: all, ~250 s)
parts_default=probe,rest,ab; source benchmarks/device_preamble.sh
if has probe; then say probe
  timeout 120 python3 benchmarks/probe_flat_diff.py 2>&1 | tee "$out/probe_flat_diff.log" | tail -12; fi
if has rest; then say "the suite's rest"
  N=4 T=150 bash benchmarks/gpu_tests_device.sh "$out" -k "row_blocks_cover_each_slots_rows_once or gemv_blocks_of_two_rows_match" > /dev/null 2>&1
  mv "$out/gpu_tests.log" "$out/rest.log"; tail -4 "$out/rest.log"; fi
cfgs='[{}, {"triton_ops.GEMV_FLAT_WORDS": true}]'
if has ab; then say "8 rows over 8, flat loads on/off"
  timeout "${A_T:-170}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-8x8} --delta-alone \
    --mma-cfgs "$cfgs" --out "$out/ab_flat8.md" > "$out/ab_flat8.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_flat8.log" | tail -30; fi
say done
