#!/bin/bash
# One device call: does the one-row GEMV path gain from more programs or more warps an SM?
# Nsight Compute (ncu_device.sh, raw_h200/s25/ncu) saw the o and down expands fill 0.36-0.42 of a
# wave and every GEMV kernel at 25% theoretical occupancy (123-128 registers). Carry .whl-store.
# Ran at commit f5585a9: the layer A/B's GEMV_EXPAND_PROGRAMS / GEMV_MIN_BLOCK_N and the
# test_gemv_chunk tests were removed after it (1c6db4e), so check that commit out to rerun them;
# the per-kernel A/B (profile_kernels.py's chunk / bn / emr / smr) runs at any later commit.
#   bash benchmarks/gemv_fill_device.sh OUT
# 1. each group's shrink and expand alone (profile_kernels.py, CUDA graph over 4 copies) at M=1:
#    runs of 256 (default) / 128 / 64 components a program, 64 columns a program, and register caps
#    for each kernel;
# 2. the layer through the modules (ab_mma.py, base + deltas, and deltas alone) with
#    expand programs picked for 512 (about a wave) and 1024 (triton_ops.GEMV_EXPAND_PROGRAMS), by
#    shorter runs only or by narrower columns first (GEMV_MIN_BLOCK_N 64), against the defaults, at
#    1 row, 4 rows, 8 rows over 8 fine-tunes.
source benchmarks/device_preamble.sh
PK_DEF='[{}, {"chunk": 128}, {"chunk": 64}, {"bn": 64}, {"bn": 64, "chunk": 128}, {"emr": 96}, {"emr": 80}, {"smr": 96}, {"smr": 80}]'
AB_DEF='[{}, {"triton_ops.GEMV_EXPAND_PROGRAMS": 512}, {"triton_ops.GEMV_EXPAND_PROGRAMS": 512, "triton_ops.GEMV_MIN_BLOCK_N": 64}, {"triton_ops.GEMV_EXPAND_PROGRAMS": 1024, "triton_ops.GEMV_MIN_BLOCK_N": 64}]'
say tests
T=${T:-60} bash benchmarks/run_device.sh tests "$out" -k test_gemv_chunk > "$out/gpu_tests.log" 2>&1; tail -2 "$out/gpu_tests.log"
say "per kernel, M=1"
timeout "${PK_T:-220}" python3 benchmarks/profile_kernels.py --copies 4 --cases 1/1 --cfgs "${PK_CFGS:-$PK_DEF}" \
  --json "$out/profile_m1.json" > "$out/profile_m1.log" 2>&1; grep -E 'TOTAL|^\| M=|Error' "$out/profile_m1.log" | head -80
say "layer A/B"
timeout "${AB_T:-200}" python3 benchmarks/ab_mma.py --rounds 3 --copies 4 --cases ${CASES:-1,4,8x8} --delta-alone --out "$out/ab_chunk.md" \
  --mma-cfgs "${AB_CFGS:-$AB_DEF}" > "$out/ab_chunk.log" 2>&1
grep '^|\|base alone' "$out/ab_chunk.log"; say done
