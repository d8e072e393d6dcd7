#!/bin/bash
# One device call (prepared in the twenty-fifth session, not yet run): (1) the GPU tests that go
# through the GEMV expand's float32 atomics (on by default since then: the side stream, graph
# decoding, the lazy models); (2) which kernels should serve 2..4 rows of ONE fine-tune. Those rows
# take the GEMV kernels (mma.ONE_MIN_ROWS = 5), and at 4 rows the layer measured x2.44 of base
# against x1.50 at 5 rows on the tensor-core kernels (raw_h200/s25/atomic, README): 2..4 rows of one
# fine-tune on the tensor-core kernels were never measured; (3) the GEMV prologue asking for slot 0's
# entries beside the row block (triton_ops.GEMV_GUESS_SLOT0, off) at 1 row and 8 rows over 8.
# Ran at d16a426 (twenty-sixth session, raw_h200/s26/rows): its test step needs more than T=200 s
# (cut short there; the tests ran after in their own calls); the slot-0 guess was removed after it
# (its variant no longer exists). Carry .whl-store.
#   bash benchmarks/rows_path_device.sh OUT
set -u
out=${1:-/tmp/out}; mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
t0=$(date +%s); say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
say tests
(cp -r tests pyproject.toml /tmp/ds/ && cd /tmp/ds && timeout "${T:-480}" python3 -m pytest -q -p no:cacheprovider \
  tests/kernels/test_gemv_atomic.py tests/kernels/test_side_stream.py tests/kernels/test_lazy.py tests/kernels/test_ops.py 2>&1 | tail -6) \
  | tee "$out/gpu_tests.log"
say "rows path A/B"
timeout "${AB_T:-200}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-2,3,4,5} --delta-alone --out "$out/ab_rows.md" \
  --mma-cfgs '[{}, {"ONE_MIN_ROWS": 2}]' > "$out/ab_rows.log" 2>&1
grep '^|\|base alone\|alone' "$out/ab_rows.log"
say "slot-0 guess A/B"
timeout "${G_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases 1,8x8 --delta-alone --out "$out/ab_guess.md" \
  --mma-cfgs '[{}, {"triton_ops.GEMV_GUESS_SLOT0": true}]' > "$out/ab_guess.log" 2>&1
grep '^|\|base alone\|alone' "$out/ab_guess.log"; say done
