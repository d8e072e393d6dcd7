#!/bin/bash
# The GPU test suite (tests/kernels) in one device call. Run one after the other it no longer fits a
# call (twenty-sixth session: 540 s reached test_mma, ~60% of it; compiling the Triton and Gluon
# kernels is most of it, CPU-bound), so pytest-xdist spreads the files over N worker processes that
# share the GPU and Triton's on-disk cache (--dist loadfile: a file's tests in one worker, which
# compiles its kernels once). .whl-store/deps must hold pytest-xdist and execnet beside the store's
# wheels: `bash benchmarks/device_wheels.sh` fetches them all; carry .whl-store.
#   bash benchmarks/gpu_tests_device.sh OUT [pytest args, e.g. -k side_stream]
set -u
out=${1:-/tmp/out}; shift 2>/dev/null; mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
rm -rf /tmp/ds/tests && cp -r tests pyproject.toml /tmp/ds/
cd /tmp/ds && timeout "${T:-560}" python3 -m pytest -q -p no:cacheprovider -n "${N:-8}" --dist "${DIST:-loadfile}" -rfEs --durations=15 \
  tests/kernels "$@" 2>&1 | tee "$out/gpu_tests.log" | tail -40
