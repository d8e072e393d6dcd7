#!/bin/bash
# Device call for the GEMV shrink's fused clear of the delta buffer (triton_ops.FUSED_CLEAR). Carry .whl-store.
#   bash benchmarks/clear_device.sh OUT   one Llama-2-7B layer at 1 and 4 rows through the modules (ab_mma.py, graph,
#                                        side stream: the clear fused into the shrink against a zero_() launch of its
#                                        own), after the GPU tests that go through it (test_ops, test_side_stream, test_lazy unless LAZY_TESTS=)
set -u
out=${1:-/tmp/out}
export PYTHONUNBUFFERED=1
bash benchmarks/run_device.sh setup /tmp/unused >/dev/null
source /tmp/ds/env
mkdir -p "$out"
cp -r tests pyproject.toml /tmp/ds/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/machine.txt"
(cd /tmp/ds && timeout "${T:-150}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_ops.py::test_a_fresh_output_is_cleared_by_the_shrink_not_added_to \
  tests/kernels/test_ops.py::test_gemv_and_dot_paths_agree_and_the_expand_handshake_resets tests/kernels/test_side_stream.py ${LAZY_TESTS-tests/kernels/test_lazy.py} 2>&1 | tail -3) | tee "$out/gpu_tests.log"
timeout "${AB_T:-200}" python3 benchmarks/ab_mma.py --rounds ${ROUNDS:-5} --copies 4 --cases ${CASES:-1,4} --out "$out/ab_clear.md" \
  --mma-cfgs '[{}, {"triton_ops.FUSED_CLEAR": false}]' > "$out/ab_clear.log" 2>&1
grep '^|\|base alone\|Error' "$out/ab_clear.log"
