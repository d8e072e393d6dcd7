#!/bin/bash
# Device call for the one-row WIDE GEMV kernels (triton_ops.GEMV_WIDE). Carry .whl-store.
#   bash benchmarks/wide_device.sh OUT   one Llama-2-7B layer at one row through the modules (ab_mma.py: layer and
#                                        deltas alone, the default mapping against WIDE and its knobs; a profile of
#                                        each), then the kernel tests (WIDE's own, then test_pdl / test_lazy /
#                                        test_ops with DELTASTORE_GEMV_WIDE=1)
set -u
out=${1:-/tmp/out}
export PYTHONUNBUFFERED=1
bash benchmarks/run_device.sh setup /tmp/unused >/dev/null
source /tmp/ds/env
mkdir -p "$out"
cp -r tests pyproject.toml /tmp/ds/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/machine.txt"
W='"triton_ops.GEMV_WIDE": true'
DEF="[{}, {$W}, {$W, \"triton_ops.GEMV_WIDE_KC\": 512}, {$W, \"triton_ops.GEMV_WIDE_MAX_SPLIT\": 8}, {$W, \"triton_ops.GEMV_WIDE_TILE_R\": 32}]"
timeout "${AB_T:-240}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1} --delta-alone ${PROFILE:---profile} \
  --out "$out/ab_wide.md" --mma-cfgs "${CFGS:-$DEF}" > "$out/ab_wide.log" 2>&1
grep '^|\|base alone\|delta alone\|us  in all\|Error' "$out/ab_wide.log"
(cd /tmp/ds && timeout "${T:-100}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_ops.py -k wide 2>&1 | tail -3
 DELTASTORE_GEMV_WIDE=1 timeout "${T2:-150}" python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_pdl.py \
   tests/kernels/test_lazy.py tests/kernels/test_ops.py 2>&1 | tail -3) | tee "$out/gpu_tests.log"
