#!/bin/bash
# One short device call (twenty-ninth session): the delta kernels beside the one-row base GEMV run ~3x
# their time alone (raw_h200/s29: the q/k/v shrink 27 us beside the base at full speed against ~8-10),
# being latency-bound loads from a DRAM the base keeps busy. Two L2 knobs, one row through the modules:
# a side-stream prefetch of the lone fine-tune's packed words before its shrink (triton_ops.PREFETCH),
# the base GEMV reading W evict_first (base_gemv.EVICT_FIRST), and both; the first variant's traced
# replay. Carry .whl-store.   bash benchmarks/l2_device.sh OUT
source benchmarks/device_preamble.sh
timeout "${T:-200}" python3 benchmarks/ab_mma.py --rounds 5 --copies 4 --cases 1 --timeline --out "$out/ab_l2.md" \
  --mma-cfgs '[{"triton_ops.PREFETCH": true, "base_gemv.EVICT_FIRST": true}, {}, {"triton_ops.PREFETCH": true}, {"base_gemv.EVICT_FIRST": true}]' \
  > "$out/ab_l2.log" 2>&1
grep -v '^ *rel err\|^    base GEMV\|Warning\|_warn_once' "$out/ab_l2.log" | tail -40
