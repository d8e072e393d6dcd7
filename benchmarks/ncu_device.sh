#!/bin/bash
# One device call: Nsight Compute's view of the default one-row GEMV delta kernels (shrink, expand)
# of one Llama-2-7B layer (benchmarks/probe_gemv_ncu.py), clocks left alone. Carry .whl-store.
#   bash benchmarks/ncu_device.sh OUT [ROWS]
# KRE picks the kernels (a regex; default the GEMV pair): KRE='_(shrink|expand)_kernel' bash benchmarks/ncu_device.sh OUT 16
# profiles the tensor-core kernels, which apply_deltas takes for one fine-tune's 2..32 rows.
# OUT gets ncu_gemv_m$ROWS.txt (sections with every detail, the hottest SASS lines by stall reason)
# and probe.log (the probe's own CUDA-event times, unprofiled, for reading beside ncu's durations).
set -u
out=${1:-/tmp/out}; rows=${2:-1}; mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null 2>&1; source /tmp/ds/env
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/machine.txt"
timeout "${PT:-90}" python3 benchmarks/probe_gemv_ncu.py --rows "$rows" --rounds 6 > "$out/probe.log" 2>&1; tail -3 "$out/probe.log"
timeout "${NT:-300}" ncu --clock-control none --kernel-name regex:"${KRE:-gemv_(shrink|expand)}" --launch-skip 16 --launch-count 8 \
  --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats \
  --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section ComputeWorkloadAnalysis \
  --section InstructionStats --section SourceCounters --print-details all \
  python3 benchmarks/probe_gemv_ncu.py --rows "$rows" --rounds 3 > "$out/ncu_gemv_m$rows.txt" 2>&1
echo "ncu rc $?"; grep -E '^  _(gemv|shrink|expand)|Duration|Memory Throughput|L1/TEX Hit|Achieved Occupancy|Registers Per|Issue Slots Busy|No Eligible' "$out/ncu_gemv_m$rows.txt" | head -80
