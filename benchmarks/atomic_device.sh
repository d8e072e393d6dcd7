#!/bin/bash
# One device call: the GEMV expand adding into a float32 y with atomics (triton_ops.GEMV_ATOMIC)
# against the counter handshake. Carry .whl-store.   bash benchmarks/atomic_device.sh OUT
# 1. its GPU test, and the GEMV/side-stream/lazy tests with DELTASTORE_GEMV_ATOMIC=1;
# 2. the layer through the modules (ab_mma.py: base + deltas in a graph, the deltas on the side
#    stream into their float32 buffer; and the deltas alone into float32) at 1 row, 4 rows, 8 rows
#    over 8 fine-tunes, GEMV_ATOMIC off / on.
source benchmarks/device_preamble.sh
say tests
DELTASTORE_GEMV_ATOMIC=1 T=${T:-80} bash benchmarks/run_device.sh tests "$out" -k "gemv_atomic or side_stream or gemv_and_dot or delta_group" \
  > "$out/gpu_tests.log" 2>&1; tail -2 "$out/gpu_tests.log"
say "layer A/B"
timeout "${AB_T:-220}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,4,8x8} --delta-alone --out "$out/ab_atomic.md" \
  --mma-cfgs '[{}, {"triton_ops.GEMV_ATOMIC": true}]' > "$out/ab_atomic.log" 2>&1
grep '^|\|base alone\|alone' "$out/ab_atomic.log"; say done
