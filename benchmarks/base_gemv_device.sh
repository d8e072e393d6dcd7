#!/bin/bash
# Device calls for the lazy base kernels (kernels/base_gemv.py). Carry .whl-store.
#   bash benchmarks/base_gemv_device.sh OUT [sweep]   GPU tests with the side-stream and graph-decoding tests, an A/B
#                                                   of tl.dot tiles through the modules (ab_mma.py variants), then
#                                                   generate at N = 1, 8 (bench_generate.py)
#   bash benchmarks/base_gemv_device.sh OUT check     the kernel tests that go through the defaults (base GEMV, side
#                                                   stream, tensor-core kernels, lazy models), then the layer with
#                                                   the defaults against cuBLAS's base at their row counts
#   bash benchmarks/base_gemv_device.sh OUT eager     the side-stream, base GEMV and lazy-model GPU tests, the first
#                                                   token (eager prefill) A/B (probe_first_token.py), then generate
#                                                   at N = 1, 8 (first token, tokens/s, step)
set -u
out=${1:-/tmp/out}
mode=${2:-sweep}
export PYTHONUNBUFFERED=1
bash benchmarks/run_device.sh setup /tmp/unused >/dev/null
source /tmp/ds/env
mkdir -p "$out"
cp -r tests pyproject.toml /tmp/ds/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/machine.txt"
if [ "$mode" = eager ]; then
  (cd /tmp/ds && timeout "${T:-200}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_side_stream.py \
    tests/kernels/test_base_gemv.py tests/kernels/test_lazy.py 2>&1 | tail -4) | tee "$out/gpu_tests.log"
  timeout "${FT_T:-150}" python3 benchmarks/probe_first_token.py --rounds 5 --out "$out/first_token_ab.md" > "$out/first_token_ab.log" 2>&1
  tail -9 "$out/first_token_ab.log"
  timeout "${GEN_T:-200}" python3 benchmarks/bench_generate.py --ns ${NS:-1,8} --eager-ns '' --dense-ns '' --new 24 --deadline 120 \
    --out "$out/generate_h200.md" --json "$out/generate_h200.json" > "$out/generate_bench.log" 2>&1
  grep '^|' "$out/generate_h200.md"
  exit 0
fi
if [ "$mode" = check ]; then
  (cd /tmp/ds && timeout "${T:-300}" python3 -m pytest -q -p no:cacheprovider tests/kernels/test_base_gemv.py tests/kernels/test_side_stream.py \
    tests/kernels/test_mma.py tests/kernels/test_lazy.py 2>&1 | tail -6) | tee "$out/gpu_tests.log"
  timeout "${AB_T:-150}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,5,16,32x8} --out "$out/ab_defaults.md" \
    --mma-cfgs '[{}, {"base_gemv.ENABLED": false}]' > "$out/ab_defaults.log" 2>&1
  grep '^|\|base alone' "$out/ab_defaults.log"
  exit 0
fi
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
