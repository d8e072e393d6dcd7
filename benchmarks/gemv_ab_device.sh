#!/bin/bash
# One device call for issue 9's GEMV instruction work: GPU kernel tests, then an A/B of the GEMV
# kernels (this tree's fast unpack vs its old unpack (cfg fast 0) vs the kernels of 9a33e3c, from
# benchmarks/_old_triton_ops.py) at M=1 and 32 rows / 8 tenants, then the layer table with a sweep.
# Before the call, here: git show 9a33e3c:kernels/triton_ops.py > benchmarks/_old_triton_ops.py
# (untracked, not ignored: the device copy of the tree carries it). Then, on the device:
#   bash benchmarks/gemv_ab_device.sh OUTDIR
source benchmarks/device_preamble.sh
say tests
T=90 bash benchmarks/run_device.sh tests "$out" -k "gemv or every_layout or mixed or group or blocks" > "$out/kernels_tests_gemv.log" 2>&1; tail -3 "$out/kernels_tests_gemv.log"
say "A/B M=1"
timeout 100 python3 benchmarks/profile_kernels.py --copies 4 --cases 1/1 \
  --cfgs '[{"fast":0},{},{"br":32,"er":128,"chunk":512},{"br":32,"split_k":4,"er":128,"chunk":1024}]' > "$out/kernels_ab_m1.log" 2>&1; grep TOTAL "$out/kernels_ab_m1.log"
say "A/B 32/8"
timeout 70 python3 benchmarks/profile_kernels.py --copies 4 --cases 32/8 --cfgs '[{"fast":0},{}]' > "$out/kernels_ab_32x8.log" 2>&1; grep TOTAL "$out/kernels_ab_32x8.log"
say "old kernels (9a33e3c)"
cp kernels/triton_ops.py /tmp/new_triton_ops.py; cp benchmarks/_old_triton_ops.py kernels/triton_ops.py
timeout 70 python3 benchmarks/profile_kernels.py --copies 4 --cases 1/1,32/8 > "$out/kernels_ab_old.log" 2>&1; grep TOTAL "$out/kernels_ab_old.log"
cp /tmp/new_triton_ops.py kernels/triton_ops.py
say "layer table"
left=$(( 400 - ($(date +%s) - t0) ))
timeout $left python3 benchmarks/bench_kernels.py --copies 4 --sweep --deadline 30 --out "$out/kernels_h200.md" --json "$out/kernels_h200.json" > "$out/kernels_h200.log" 2>&1
tail -30 "$out/kernels_h200.log"; say done
