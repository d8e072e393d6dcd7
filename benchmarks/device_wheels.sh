#!/bin/bash
# Fill .whl-store/deps (gitignored, so every fresh checkout needs it again) with the wheels the device
# machine lacks for the store, the codec layer and the GPU tests: its image has torch 2.11, triton 3.6,
# numpy, safetensors, transformers, huggingface_hub, tokenizers and tqdm (../.library/device/KINDS.md),
# not these. Python 3.12, manylinux x86-64, no dependencies resolved (each one named here). numba and
# llvmlite stay behind (~45 MB of the 64 MiB a call carries): the codec's numpy paths serve there.
# Run here, then carry .whl-store; run_device.sh setup installs them into /tmp/site, and
#   bash benchmarks/run_device.sh setup; source /tmp/ds/env; bash benchmarks/device_wheels.sh --check
# (as the first command of a call) says which imports still fail there.
#   bash benchmarks/device_wheels.sh [DIR]
set -eu
if [ "${1:-}" = "--check" ]; then
  for m in zstandard cffi sqlalchemy alembic mako fsspec typer rich click hypothesis sortedcontainers pytest xdist execnet gguf psutil \
           transformers safetensors numpy torch triton; do
    python3 -c "import $m" 2>/dev/null && echo "ok   $m" || echo "MISSING $m"
  done
  exit 0
fi
dir=${1:-.whl-store/deps}; mkdir -p "$dir"
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any"
WHEELS="zstandard==0.25.0 cffi==2.0.0 pycparser SQLAlchemy==2.1.9 greenlet alembic Mako MarkupSafe fsspec==2026.9.0
  typer click shellingham rich markdown-it-py mdurl Pygments hypothesis sortedcontainers attrs
  pytest pluggy iniconfig pytest-xdist==3.8.0 execnet==2.1.2 gguf psutil"
for w in $WHEELS; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT -d "$dir" "$w" \
    || echo "device_wheels: no wheel for $w" >&2
done
ls "$dir" | wc -l; du -sh "$dir"
