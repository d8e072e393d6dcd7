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
(cp -r tests pyproject.toml /tmp/ds/ && cd /tmp/ds && timeout "${T:-150}" python3 -m pytest -q -x -s -p no:cacheprovider \
  tests/kernels/test_lazy.py tests/kernels/test_materialize_gpu.py 2>&1) | tee "$out/generate_tests.log"
python3 benchmarks/bench_generate.py --out "$out/generate_h200.md" --json "$out/generate_h200.json" "$@" 2>&1 | tee "$out/generate_bench.log"
