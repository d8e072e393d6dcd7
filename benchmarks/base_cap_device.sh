#!/bin/bash
# One device call (twenty-ninth session): the one-row base GEMV on a capped grid (base_gemv.PROGRAMS_PER_SM).
# The traced replay of served_device.sh (raw_h200/s29/ab_groups.md) showed the delta shrink of q/k/v and
# gate/up starting ~18 us after their base GEMV (whose 1,536 / 2,752 programs fill every SM), against
# ~1 us for o and down (512 programs). Here: the kernel tests the served-rows count touches (the files
# gpu_tests_device.sh did not reach in 300 s may be among them), then one row through the modules with
# the base capped at 4, 6 and 8 programs an SM (and 6 with the delta buffer zeroed by the shrink), then
# the best guess group by group with its traced replay. Carry .whl-store.
#   bash benchmarks/base_cap_device.sh OUT
parts_default=tests,cap,groups; source benchmarks/device_preamble.sh
if has tests; then say tests
  (rm -rf /tmp/ds/tests && cp -r tests pyproject.toml /tmp/ds/ && cd /tmp/ds && timeout "${T:-200}" python3 -m pytest -q -p no:cacheprovider \
    -n "${N:-8}" --dist loadfile -rfEs tests/kernels/test_lazy_lowrank.py tests/kernels/test_gemv_atomic.py tests/kernels/test_base_gemv.py \
    tests/kernels/test_dense.py tests/kernels/test_zero_in_kernels.py tests/kernels/test_side_stream.py 2>&1 | grep -v Warning | tail -15) \
    | tee "$out/tests.log"; fi
if has cap; then say "base GEMV cap"
  timeout "${C_T:-170}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1 --delta-alone --out "$out/ab_cap.md" \
    --mma-cfgs '[{}, {"base_gemv.PROGRAMS_PER_SM": 4}, {"base_gemv.PROGRAMS_PER_SM": 6}, {"base_gemv.PROGRAMS_PER_SM": 8}, {"base_gemv.PROGRAMS_PER_SM": 6, "linear.ZERO_IN_KERNELS": true}]' \
    > "$out/ab_cap.log" 2>&1
  grep '^|\|base alone\|alone\|Error\|error' "$out/ab_cap.log" | tail -20; fi
if has groups; then say "group by group, capped at ${G_CAP:-6}"
  timeout "${G_T:-110}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1 --by-group --timeline \
    --mma-cfgs "[{\"base_gemv.PROGRAMS_PER_SM\": ${G_CAP:-6}}]" --out "$out/ab_cap_groups.md" > "$out/ab_cap_groups.log" 2>&1
  grep -v '^ *rel err\|^    base GEMV\|Warning\|_warn_once' "$out/ab_cap_groups.log" | tail -50; fi
say done
