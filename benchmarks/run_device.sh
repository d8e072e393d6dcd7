#!/bin/bash
# How the kernel and generate benchmarks run on the device machine (one H200, torch 2.11, Triton 3.6):
# the wheels the codec layer needs come from .whl-store/deps (carried; `bash benchmarks/device_wheels.sh`
# fetches them), deltastore from this tree by
# PYTHONPATH (a symlink farm maps codec/ kernels/ cli/ migrations/ into the deltastore package).
#   bash benchmarks/run_device.sh setup            # then, in the same shell: source /tmp/ds/env
#   bash benchmarks/run_device.sh tests|kernels|bitdelta|fused|generate OUTDIR [extra args]
# The whole GPU test suite no longer fits one call run one test after another: gpu_tests_device.sh
# spreads it over pytest-xdist workers (its wheels in .whl-store/deps beside the others).
set -u
what=${1:-setup}; out=${2:-/tmp/out}; shift 2 2>/dev/null
if [ ! -f /tmp/ds/env ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl-store/deps/*.whl >/dev/null 2>&1
  mkdir -p /tmp/ds/deltastore && ln -sf "$PWD"/deltastore/* /tmp/ds/deltastore/
  for d in codec kernels cli migrations; do ln -sfn "$PWD/$d" /tmp/ds/deltastore/$d; done
  echo "export PYTHONPATH=/tmp/ds:/tmp/site" > /tmp/ds/env
fi
source /tmp/ds/env
mkdir -p "$out"
case $what in
  setup) ;;
  tests) (cp -r tests pyproject.toml /tmp/ds/ && cd /tmp/ds && timeout "${T:-200}" python3 -m pytest -q -x -p no:cacheprovider tests/kernels "$@") ;;
  kernels) python3 benchmarks/bench_kernels.py --copies 4 --out "$out/kernels_h200.md" --json "$out/kernels_h200.json" "$@" ;;
  diagnose) python3 benchmarks/bench_kernels.py --diagnose "$@" ;;
  bitdelta) python3 benchmarks/bench_bitdelta.py --out "$out/bitdelta_h200.md" --json "$out/bitdelta_h200.json" "$@" ;;
  fused) python3 benchmarks/bench_kernels.py --fused --copies 4 --out "$out/fused_gemv_h200.md" --json "$out/fused_gemv_h200.json" "$@" ;;
  generate) python3 benchmarks/bench_generate.py --out "$out/generate_h200.md" --json "$out/generate_h200.json" "$@" ;;
esac
