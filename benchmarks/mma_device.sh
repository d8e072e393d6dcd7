#!/bin/bash
# One device call for the tensor-core kernels (kernels/mma.py): their GPU tests, then the A/B of the
# modules users get with and without them (benchmarks/ab_mma.py). Carry .whl-store/deps (zstandard,
# sqlalchemy, alembic, mako, markupsafe, greenlet wheels for Python 3.12). ~200 s on a fresh H200.
#   bash benchmarks/mma_device.sh OUT [ab_mma.py arguments]
# e.g. bash benchmarks/mma_device.sh $OUT --cases 1,16,32x8 --mma-cfgs '[{}, {"EXPAND_STEP": 16}]'
set -u
out=${1:-/tmp/out}; shift 2>/dev/null
[ $# -eq 0 ] && set -- --cases 1,16,32x8,64x32
export PYTHONUNBUFFERED=1
bash benchmarks/run_device.sh setup
source /tmp/ds/env
mkdir -p "$out"
cp -r tests pyproject.toml /tmp/ds/
(cd /tmp/ds && timeout "${T:-120}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_mma.py tests/kernels/test_mma_unpack.py -rs 2>&1 | tee "$out/mma_tests.log" | tail -5)
timeout "${AB_T:-330}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --out "$out/ab_mma.md" "$@" 2>&1 | tee "$out/ab_mma.log" | tail -14
