#!/bin/bash
# Issue 7, twelfth session: the lossless fine-tune add on the device's 16 cores with a chunk's frames
# compressed in one GIL-free call (codec/_numba.compress_frames, 43ff5a8) and then the whole chunk's
# encode in one (planes.diff_groups, fd62141), and who holds the GIL there.
# Carry .whl-store/deps and .whl-store/tools (py-spy), and OLD_SITE if given. One call (~6-7 minutes):
#   [PARTS=pairs,gil,scaling] bash benchmarks/ft_add_gil_device.sh OUT [SCALING_LAYERS [OLD_SITE]]
# e.g. PARTS=scaling bash benchmarks/ft_add_gil_device.sh OUT 12 .whl-store/oldfd6  (fd62141 beside HEAD, 2 rounds)
# 1. DELTASTORE_ZSTD_ACCEL=0 (C extension's compressor: the three-call path) against 16 (the default:
#    the one-call path), add_ft at 16 threads, 4 layers, alternating pairs (OUT/pairs.md);
# 2. py-spy --gil over add_base + add_ft at 16 threads, 4 layers (OUT/gil16.md); the same sampling
#    every thread's leaf frames (--wall, OUT/wall16.md);
# 3. with SCALING_LAYERS (e.g. 12): bench_scaling.py at 16 workers, one round (OUT/scaling.md); with
#    OLD_SITE (a pip --target install of another commit) that install too, two rounds, alternating.
# A fresh machine compiles numba's kernels first (~30 s per install): the timeouts leave room for it.
set -u
out=${1:-/tmp/out}; layers=${2:-}; old=${3:-}; parts=${PARTS:-pairs,gil,scaling}
mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null
source /tmp/ds/env
python3 -m pip install -q --no-index --no-deps --target /tmp/spy .whl-store/tools/py_spy-*.whl >/dev/null 2>&1
export PATH=/tmp/spy/bin:$PATH
{ nproc; uptime; } > "$out/machine.txt"
if [[ ,$parts, == *,pairs,* ]]; then
for i in 1 2; do
  for v in 0 16; do
    echo "## DELTASTORE_ZSTD_ACCEL=$v, pair $i" >> "$out/pairs.md"
    DELTASTORE_ZSTD_ACCEL=$v PROBE_SAMPLE_S=0 timeout 120 python3 benchmarks/probe_ft_add_stages.py --layers 4 --threads 16 \
      --ops add_ft --work /tmp/stg >> "$out/pairs.md" 2>&1
  done
done
grep -E "^## |^### " "$out/pairs.md"
fi
if [[ ,$parts, == *,gil,* ]]; then
timeout 150 python3 benchmarks/profile_gil.py --layers 4 --threads 16 --ops add_base,add_ft --rate 200 --nonblocking \
  --work /tmp/stg --top 14 --out "$out/gil16.md" > "$out/gil16.log" 2>&1; tail -4 "$out/gil16.log" | cut -c1-400
timeout 150 python3 benchmarks/profile_gil.py --layers 4 --threads 16 --ops add_base,add_ft --rate 100 --wall \
  --work /tmp/stg --top 10 --out "$out/wall16.md" > "$out/wall16.log" 2>&1; tail -12 "$out/wall16.log" | cut -c1-300
fi
rm -rf /tmp/stg
if [[ -n "$layers" && ,$parts, == *,scaling,* ]]; then
  variant=(--rounds 1); limit=200
  [ -n "$old" ] && { variant=(--variant "old=$(realpath "$old"):/tmp/site:16" --rounds 2); limit=480; }
  timeout $limit python3 benchmarks/bench_scaling.py --layers "$layers" --workers 16 "${variant[@]}" --work /tmp/scale \
    --out "$out/scaling.md" > "$out/scaling.log" 2>&1
  grep -E "GBps|median" "$out/scaling.log" | cut -c1-300
fi
uptime >> "$out/machine.txt"
