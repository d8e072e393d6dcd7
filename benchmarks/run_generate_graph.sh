#!/bin/bash
# Issue 9's device run (one H200): the lazy-model and GPU-decode tests on the GPU, then
# bench_generate (eager vs CUDA graph, N fine-tunes, materialized beside it). Output under OUTDIR.
#   bash benchmarks/run_generate_graph.sh OUTDIR [bench_generate args]
# Environment as run_device.sh makes it (wheels from .whl-store/deps, deltastore from this tree).
set -u
out=${1:-/tmp/out}; shift 2>/dev/null
bash benchmarks/run_device.sh setup /tmp/unused
source /tmp/ds/env
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)' | tee -a "$out/machine.txt"
sha256sum kernels/*.py deltastore/graph_decode.py | tee -a "$out/machine.txt"
# the GPU-only tests first (graph vs eager tokens, GPU decode bound), then the rest of test_lazy.py; each new batch
# shape costs ~30-40 s of Triton compiling on a fresh machine (seen 2026-11-30), so give them T >= 240 s
cp -r tests pyproject.toml /tmp/ds/
(cd /tmp/ds && timeout "${T:-300}" python3 -m pytest -q -x -s -p no:cacheprovider \
  tests/kernels/test_lazy.py::test_cuda_graph_decoding_gives_the_eager_tokens tests/kernels/test_materialize_gpu.py 2>&1 \
  && timeout "${T:-300}" python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_lazy.py \
     --deselect tests/kernels/test_lazy.py::test_cuda_graph_decoding_gives_the_eager_tokens 2>&1) | tee "$out/generate_tests.log"
python3 benchmarks/bench_generate.py --out "$out/generate_h200.md" --json "$out/generate_h200.json" "$@" 2>&1 | tee "$out/generate_bench.log"
