#!/bin/bash
# Issue 7, what bounds the lossless fine-tune add on the device's 16 cores (about 6 busy whatever its
# stages cost; eleventh session). Three questions, one call (carry .whl-store/deps, with cffi):
#   1. the stage probe's own cost: its in-process 20 ms sampler (PROBE_SAMPLE_S=0 turns it off) holds
#      the GIL it measures;
#   2. the GIL's hand-off: Python makes a waiting thread wait up to 5 ms (sys.getswitchinterval) for a
#      holder that does not release; BENCH_SWITCH_INTERVAL=0.0005 in the op's process;
#   3. the op's serial start and tail: the rate at 4 layers (2.1 GB) against 12 (6.4 GB), no probe.
#   [PAIRS=1] bash benchmarks/ft_add_bound_device.sh OUT   (PAIRS=1: ~7-9 minutes, under one call's 600 s)
set -u
out=${1:-/tmp/out}
mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null
source /tmp/ds/env
{ nproc; uptime; } > "$out/machine.txt"
for i in $(seq "${PAIRS:-1}"); do
  for v in "PROBE_SAMPLE_S=0.02" "PROBE_SAMPLE_S=0" "PROBE_SAMPLE_S=0 BENCH_SWITCH_INTERVAL=0.0005"; do
    echo "## $v, pair $i" >> "$out/probe.md"
    env $v timeout 120 python3 benchmarks/probe_ft_add_stages.py --layers 4 --threads 16 --ops add_ft --work /tmp/stg \
      >> "$out/probe.md" 2>&1
  done
done
rm -rf /tmp/stg
grep -E "^## |^### " "$out/probe.md"
for v in "" "0.0005"; do
  BENCH_SWITCH_INTERVAL=$v timeout 200 python3 benchmarks/bench_scaling.py --layers 12 --workers 16 --rounds 1 --work /tmp/scale12 \
    --out "$out/scaling12_si${v:-default}.md" > "$out/scaling12_si${v:-default}.log" 2>&1
  grep -E "GBps" "$out/scaling12_si${v:-default}.log" | cut -c1-240
done
uptime >> "$out/machine.txt"
