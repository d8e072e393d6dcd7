#!/bin/bash
# One device call (twenty-ninth session): the fused join (kernels/join.py: the base GEMV's and the GEMV
# expand's last program adds the delta into y, no add kernel). The traced replay of served_device.sh put
# the add and its launch gaps at ~2 us a group on a one-row layer's critical path. First the GPU tests of
# the join and of the paths beside it, then one row through the modules with it on and off
# (join.ENABLED), then with it on group by group and as one traced replay. Carry .whl-store.
#   bash benchmarks/join_device.sh OUT
parts_default=tests,ab,groups; source benchmarks/device_preamble.sh
if has tests; then say tests
  (rm -rf /tmp/ds/tests && cp -r tests pyproject.toml /tmp/ds/ && cd /tmp/ds && timeout "${T:-170}" python3 -m pytest -q -p no:cacheprovider \
    -n "${N:-6}" --dist loadfile -rfEs tests/kernels/test_fused_join.py tests/kernels/test_side_stream.py tests/kernels/test_pdl.py \
    tests/kernels/test_gemv_atomic.py tests/kernels/test_base_gemv.py 2>&1 | grep -v Warning | tail -15) | tee "$out/tests.log"; fi
if has ab; then say "fused join on / off"
  timeout "${A_T:-120}" python3 benchmarks/ab_mma.py --rounds 5 --copies 4 --cases 1 --delta-alone --out "$out/ab_join.md" \
    --mma-cfgs '[{}, {"join.ENABLED": false}]' > "$out/ab_join.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_join.log" | tail -12; fi
if has groups; then say "group by group, fused join"
  timeout "${G_T:-90}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1 --by-group --timeline \
    --mma-cfgs '[{}]' --out "$out/ab_join_groups.md" > "$out/ab_join_groups.log" 2>&1
  grep -v '^ *rel err\|^    base GEMV\|Warning\|_warn_once' "$out/ab_join_groups.log" | tail -40; fi
say done
