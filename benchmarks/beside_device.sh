#!/bin/bash
# One device call (prepared in the twenty-sixth session, not yet run): what the delta kernels on the
# side stream cost the base GEMV beside them. At one row the deltas alone take ~82 us and the base
# alone ~120, yet the layer ~158: ~36 us of the deltas is not hidden. A resident GEMV program at 4
# warps and 123-128 registers holds a quarter of an SM's register file (four of them: all of it), and
# the side stream's high priority places them before the base's programs. Variants through the modules
# (ab_mma.py, each checked against the reference first): the side stream at the default priority;
# the GEMV kernels capped at 96 / 80 registers; at 2 warps; the delta buffer zeroed by the delta
# kernels (linear.ZERO_IN_KERNELS: the GEMV shrink's programs, the tensor-core path's z launch) instead
# of a zero_() launch of its own ahead of them on the side stream. Cases: one row (GEMV), 8 rows over 8
# fine-tunes (GEMV), 4 rows of one fine-tune and 32 over 8 (tensor-core kernels: the priority and the
# zeroing); then one fine-tune at 24, 32 and 64 rows on the tensor-core kernels (mma.ONE_MAX_ROWS 16:
# the dense path from 17 rows, x3.17 of base at 64) against the defaults. First the GPU tests of this session's changes (test_pdl under atomics; the knobs; the
# zeroing). Carry .whl-store.
#   bash benchmarks/beside_device.sh OUT
# PARTS=tests,gemv,prio,rows (the default: all four, ~650 s) picks some, to split it over two calls.
parts_default=tests,gemv,prio,rows; source benchmarks/device_preamble.sh
if has tests; then say tests
(cp -r tests pyproject.toml /tmp/ds/ && cd /tmp/ds && timeout "${T:-150}" python3 -m pytest -q -p no:cacheprovider -rfE \
  tests/kernels/test_pdl.py tests/kernels/test_gemv_atomic.py tests/kernels/test_side_stream.py tests/kernels/test_zero_in_kernels.py \
  -k "pdl or launch_defaults or priority or zero" 2>&1 | tail -8) \
  | tee "$out/gpu_tests.log"; fi
if has gemv; then say "GEMV knobs and priority, GEMV cases"
CFGS='[{}, {"linear.ZERO_IN_KERNELS": true}, {"linear.SIDE_PRIORITY": "default"}, {"triton_ops.GEMV_MAXNREG": 96}, {"triton_ops.GEMV_MAXNREG": 80}, {"triton_ops.GEMV_WARPS": 2}]'
timeout "${AB_T:-300}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,8x8} --delta-alone --out "$out/ab_gemv.md" \
  --mma-cfgs "$CFGS" > "$out/ab_gemv.log" 2>&1
grep '^|\|base alone\|alone' "$out/ab_gemv.log"; fi
if has prio; then say "priority, tensor-core cases"
CFGS2='[{}, {"linear.ZERO_IN_KERNELS": true}, {"linear.SIDE_PRIORITY": "default"}]'
timeout "${P_T:-180}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES2:-4,32x8} --delta-alone --out "$out/ab_prio.md" \
  --mma-cfgs "$CFGS2" > "$out/ab_prio.log" 2>&1
grep '^|\|base alone\|alone' "$out/ab_prio.log"; fi
if has rows; then say "one fine-tune past 16 rows: the tensor-core kernels against the dense path"
CFGS3='[{"ONE_MAX_ROWS": 32}, {"ONE_MAX_ROWS": 64, "MAX_ROWS": 64}]'
timeout "${R_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES3:-24,32,64} --delta-alone --out "$out/ab_rows.md" \
  --mma-cfgs "$CFGS3" > "$out/ab_rows.log" 2>&1
grep '^|\|base alone\|alone' "$out/ab_rows.log"; fi; say done
