#!/bin/bash
# An A/B of one environment variable on the device's 16 cores: the lossless fine-tune add and
# checkout (probe_ft_add_stages.py, each stage's own wall time beside its CPU) in alternating
# pairs, then the scaling bench of this tree against another install. Carry .whl-store/deps (and
# the other install's site, if given). One call:
#   AB=DELTASTORE_ZSTD_ACCEL AB_VALUES="0 16" bash benchmarks/ab_device.sh OUT [OLD_SITE] [LAYERS=4] [PAIRS=2]
# writes OUT/pairs.md (each run labelled), OUT/scaling.md and OUT/scaling.log.
set -u
out=${1:-/tmp/out}; old=${2:-}; layers=${3:-4}; pairs=${4:-2}
var=${AB:?set AB to the variable}; values=${AB_VALUES:?set AB_VALUES}
mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null
source /tmp/ds/env
{ nproc; uptime; } > "$out/machine.txt"
for i in $(seq "$pairs"); do
  for v in $values; do
    echo "## $var=$v, pair $i" >> "$out/pairs.md"
    env "$var=$v" timeout 150 python3 benchmarks/probe_ft_add_stages.py --layers "$layers" --threads 16 --ops add_ft,checkout_ft \
      --work /tmp/stg >> "$out/pairs.md" 2>&1
  done
done
rm -rf /tmp/stg
grep -E "^## |^### " "$out/pairs.md"
variant=()
[ -n "$old" ] && variant=(--variant "old=$(realpath "$old"):/tmp/site:16")
timeout 300 python3 benchmarks/bench_scaling.py --layers "$layers" --workers 16,8 "${variant[@]}" --rounds 2 --work /tmp/scale \
  --out "$out/scaling.md" > "$out/scaling.log" 2>&1
grep -E "median|GBps" "$out/scaling.log" | cut -c1-260
uptime >> "$out/machine.txt"
