#!/bin/bash
# Issue 7 on the device's 16 cores: where the lossless fine-tune add's time goes as workers grow,
# and whether its cores stay busy (the add was flat at 0.64 GB/s from 8 to 16 workers).
# Carry .whl-store/deps (zstandard, sqlalchemy, alembic, mako, greenlet wheels). One call:
#   bash benchmarks/ft_add_device.sh OUT [THREADS=16,8,4] [LAYERS=4]
# writes OUT/stages_h200.md: per stage CPU s/GB, faults, and the threads running each quarter second.
set -u
out=${1:-/tmp/out}; threads=${2:-16,8,4}; layers=${3:-4}
mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null
source /tmp/ds/env
{ nproc; uptime; python3 -c "import numba, zstandard; print('numba', numba.__version__, 'zstandard', zstandard.__version__)"; } > "$out/machine.txt" 2>&1
python3 benchmarks/probe_ft_add_stages.py --layers "$layers" --threads "$threads" --ops add_ft,checkout_ft --work /tmp/stg \
  > "$out/stages_h200.md" 2>&1
uptime >> "$out/machine.txt"
grep -E "^###|threads running" "$out/stages_h200.md"
