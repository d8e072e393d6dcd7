#!/bin/bash
# One device call (<= ~300 s) for issue 9's tl.dot work: the dot-path kernel tests on the GPU, then an
# A/B of each group's dot shrink and expand alone (profile_kernels.py: CUDA graph over 4 layer
# copies) at M = 16, 64, 256 (one fine-tune) and 32 rows over 8 fine-tunes (the dot path forced:
# by default those 4-row blocks run the GEMV kernels), this tree's kernels against the kernels of
# benchmarks/_old_triton_ops.py, printed as one table (also $OUT/dot_ab.md).
# Before the call, here: git show <before>:kernels/triton_ops.py > benchmarks/_old_triton_ops.py
# (untracked, not ignored: the device copy of the tree carries it). Then, on the device:
#   bash benchmarks/dot_ab_device.sh OUTDIR
# While the tests run, both codes' kernels are compiled (profile_kernels.py --ncu: each launch once,
# untimed) in two background processes, so the timed steps find them in Triton's cache. The "before"
# code runs from its own copy of the package (/tmp/ds_old), so nothing in the tree is swapped.
set -u
out=${1:-/tmp/out}; mkdir -p "$out"
budget=${BUDGET:-285}  # seconds from the start, setup included (the lead's call: timeout_s 300)
t0=$(date +%s)
cases=${CASES:-16/1,64/1,256/1,32/8}
cfg='[{"path":"dot"}]'
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
say() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
left() { echo $(( budget - ($(date +%s) - t0) )); }
if [ ! -f benchmarks/_old_triton_ops.py ]; then
  echo "benchmarks/_old_triton_ops.py is missing (git show <before>:kernels/triton_ops.py > benchmarks/_old_triton_ops.py)"; exit 2
fi
# the "before" package: the same tree, kernels/triton_ops.py replaced
rm -rf /tmp/ds_old && mkdir -p /tmp/ds_old/deltastore && ln -sf "$PWD"/deltastore/* /tmp/ds_old/deltastore/
for d in codec cli migrations; do ln -sfn "$PWD/$d" /tmp/ds_old/deltastore/$d; done
rm -rf /tmp/ds_old/deltastore/kernels && cp -r kernels /tmp/ds_old/deltastore/kernels && cp benchmarks/_old_triton_ops.py /tmp/ds_old/deltastore/kernels/triton_ops.py
old_env="PYTHONPATH=/tmp/ds_old:/tmp/site"

say "compile both (background) + GPU tests"
timeout 110 python3 benchmarks/profile_kernels.py --ncu --cases "$cases" --cfgs "$cfg" > "$out/dot_warm_new.log" 2>&1 &
w1=$!
env $old_env timeout 110 python3 benchmarks/profile_kernels.py --ncu --cases "$cases" --cfgs "$cfg" > "$out/dot_warm_old.log" 2>&1 &
w2=$!
T=${T:-80} bash benchmarks/run_device.sh tests "$out" -k "dot or every_layout or mixed_batch or fused_slices or delta_group" > "$out/dot_tests.log" 2>&1
tail -3 "$out/dot_tests.log"
wait $w1; echo "compile new: rc $?"; wait $w2; echo "compile old: rc $?"

say "A/B: this tree"
timeout $(( $(left) / 2 > 20 ? $(left) / 2 : 20 )) python3 benchmarks/profile_kernels.py --copies 4 --cases "$cases" --cfgs "$cfg" \
  --json "$out/dot_ab_new.json" > "$out/dot_ab_new.log" 2>&1; grep -E "TOTAL|Error" "$out/dot_ab_new.log"
say "A/B: benchmarks/_old_triton_ops.py"
timeout $(( $(left) - 5 > 20 ? $(left) - 5 : 20 )) env $old_env python3 benchmarks/profile_kernels.py --copies 4 --cases "$cases" --cfgs "$cfg" \
  --json "$out/dot_ab_old.json" > "$out/dot_ab_old.log" 2>&1; grep -E "TOTAL|Error" "$out/dot_ab_old.log"
extra=()
if [ "$(left)" -ge 60 ]; then  # time left: this tree with blocks of 32 rows at 64 and 256 rows (more programs, more unpacking)
  say "variant: this tree, bm 32"
  timeout $(( $(left) - 5 )) python3 benchmarks/profile_kernels.py --copies 4 --cases 64/1,256/1 --cfgs '[{"path":"dot","bm":32}]' \
    --json "$out/dot_ab_bm32.json" > "$out/dot_ab_bm32.log" 2>&1; grep -E "TOTAL|Error" "$out/dot_ab_bm32.log"
  extra=("after, bm 32=$out/dot_ab_bm32.json")
fi
say "table"
python3 benchmarks/profile_kernels.py --compare "before=$out/dot_ab_old.json" "after=$out/dot_ab_new.json" ${extra[@]+"${extra[@]}"} | tee "$out/dot_ab.md"
say done
