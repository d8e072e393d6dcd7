#!/bin/bash
# One device call for the base GEMV (kernels/base_gemv.py): its GPU tests with the side-stream and
# graph-decoding tests, an A/B of the layer through the modules with the base by the Triton kernels
# for more rows (ab_mma.py variants), then generate at N = 1, 8 (bench_generate.py). Carry .whl-store.
#   bash benchmarks/base_gemv_device.sh OUT
set -u
out=${1:-/tmp/out}
export PYTHONUNBUFFERED=1
bash benchmarks/run_device.sh setup /tmp/unused >/dev/null
source /tmp/ds/env
mkdir -p "$out"
cp -r tests pyproject.toml /tmp/ds/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/machine.txt"
(cd /tmp/ds && timeout "${T:-150}" python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_base_gemv.py \
  tests/kernels/test_side_stream.py tests/kernels/test_lazy.py::test_cuda_graph_decoding_gives_the_eager_tokens 2>&1 | tail -4) | tee "$out/gpu_tests.log"
S='"base_gemv.SERVE_ROWS": 32'
timeout "${AB_T:-200}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-2,4,16,32x8} --out "$out/ab_dot.md" \
  --mma-cfgs "[{}, {$S}, {$S, \"base_gemv.DOT_BLOCK_N\": 64}, {$S, \"base_gemv.DOT_BLOCK_N\": 16}, {$S, \"base_gemv.DOT_STAGES\": 3}, {$S, \"base_gemv.DOT_BLOCK_K\": 256}, {$S, \"base_gemv.DOT_STAGES\": 1}]" \
  > "$out/ab_dot.log" 2>&1
grep '^|\|base alone' "$out/ab_dot.log"
timeout "${GEN_T:-200}" python3 benchmarks/bench_generate.py --ns ${NS:-1,8} --eager-ns '' --dense-ns '' --new 24 --deadline 120 \
  --prefill-profile --out "$out/generate_h200.md" --json "$out/generate_h200.json" > "$out/generate_bench.log" 2>&1
grep '^|' "$out/generate_h200.md"
