#!/bin/bash
# Issue 7 on the device's 16 cores: the lossless fine-tune add and checkout with the codecs' kernels
# loaded before the workers start (Codec.warm, the default) and without (DELTASTORE_WARM=0), in
# alternating pairs, with each stage's own wall time beside its CPU; then the scaling bench against
# another install. Carry .whl-store/deps (and the other install's site, if given). One call:
#   bash benchmarks/ft_add_warm_device.sh OUT [OLD_SITE] [LAYERS=4]
# writes OUT/warm_pairs.md (probe_ft_add_stages.py output, each run labelled) and OUT/scaling.md.
set -u
out=${1:-/tmp/out}; old=${2:-}; layers=${3:-4}
mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null
source /tmp/ds/env
{ nproc; uptime; } > "$out/machine.txt"
for i in 1 2; do
  for w in 0 1; do
    echo "## DELTASTORE_WARM=$w, pair $i" >> "$out/warm_pairs.md"
    DELTASTORE_WARM=$w timeout 150 python3 benchmarks/probe_ft_add_stages.py --layers "$layers" --threads 16 --ops add_ft,checkout_ft \
      --work /tmp/stg >> "$out/warm_pairs.md" 2>&1
  done
done
rm -rf /tmp/stg
grep -E "^## |^### " "$out/warm_pairs.md"
variant=()
[ -n "$old" ] && variant=(--variant "old=$old:/tmp/site:16")
timeout 300 python3 benchmarks/bench_scaling.py --layers "$layers" --workers 16,8 "${variant[@]}" --rounds 2 --work /tmp/scale \
  --out "$out/scaling.md" > "$out/scaling.log" 2>&1
grep "median" "$out/scaling.log" | cut -c1-200
uptime >> "$out/machine.txt"
