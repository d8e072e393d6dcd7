#!/bin/bash
# The base kernels' defaults on the GPU (kernels/base_gemv.py): the kernel tests that go through them
# (base GEMV, side stream, tensor-core kernels, graph decoding), then the layer A/B at their row counts.
#   bash benchmarks/base_gemv_check.sh OUT      (carry .whl-store)
set -u
out=${1:-/tmp/out}
export PYTHONUNBUFFERED=1
bash benchmarks/run_device.sh setup /tmp/unused >/dev/null
source /tmp/ds/env
mkdir -p "$out"
cp -r tests pyproject.toml /tmp/ds/
(cd /tmp/ds && timeout "${T:-300}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_base_gemv.py tests/kernels/test_side_stream.py \
  tests/kernels/test_mma.py tests/kernels/test_lazy.py 2>&1 | tail -6) | tee "$out/gpu_tests.log"
timeout "${AB_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,5,16,32x8} --out "$out/ab_defaults.md" \
  --mma-cfgs '[{}, {"base_gemv.ENABLED": false}]' > "$out/ab_defaults.log" 2>&1
grep '^|\|base alone' "$out/ab_defaults.log"
