#!/bin/bash
# One device call (twenty-ninth session): the served-rows count (RowPlan.served, twenty-eighth session,
# run on the GPU for the first time) and where a layer's time goes group by group.
#   1. the whole GPU suite over pytest-xdist workers (gpu_tests_device.sh): the drop check of
#      test_lazy_lowrank that failed there, the served row on GEMV, every path choice since changed;
#   2. the served-rows count on and off (deltaset.COUNT_SERVED), cases with base rows whose ids the
#      host knows: 6 rows of one fine-tune + 12 base rows (tensor-core kernels vs dense), 1 + 7
#      (GEMV at a block of one vs tl.dot), 4 rows over 2 + 20 base rows;
#   3. one layer group by group (ab_mma.py --by-group): base alone, modules, deltas alone, exposed;
#      and one traced graph replay (--timeline): each kernel's stream, start and end.
# Carry .whl-store.  PARTS=tests,served,groups (the default: all three) picks some.
#   bash benchmarks/served_device.sh OUT
parts_default=tests,served,groups; source benchmarks/device_preamble.sh
if has tests; then say tests
  N=${N:-12} T=${T:-330} bash benchmarks/gpu_tests_device.sh "$out" > /dev/null 2>&1; cp "$out/gpu_tests.log" "$out/suite.log"; rm -f "$out/gpu_tests.log"
  tail -25 "$out/suite.log"; fi
if has served; then say "served rows on/off"
  timeout "${S_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-6+12,1+7,4x2+20} --delta-alone \
    --mma-cfgs '[{}, {"deltaset.COUNT_SERVED": false}]' --out "$out/ab_served.md" > "$out/ab_served.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_served.log" | tail -30; fi
if has groups; then say "group by group"
  timeout "${G_T:-120}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${GCASES:-1,8x8,32x8} --by-group --timeline \
    --out "$out/ab_groups.md" > "$out/ab_groups.log" 2>&1
  grep -v '^ *rel err\|^    base GEMV' "$out/ab_groups.log" | tail -120; fi
say done
