#!/bin/bash
# The thirty-second session's probes of the one-row delta at a group's base: a table-lookup shrink
# (benchmarks/probe_lut_shrink.py: the product's shrink against the LUT kernels, alone and beside the
# base), one fused launch of base GEMV + expand per group (benchmarks/probe_fused_delta.py), and a table-lookup
# expand (benchmarks/probe_lut_expand.py, written after the session's device time). Carry .whl-store.
#   bash benchmarks/lut_device.sh OUT          PARTS=lut,fused,expand (default: fused, ~60 s)
parts_default=fused; source benchmarks/device_preamble.sh
if has lut; then say "LUT shrink probe"
  timeout "${L_T:-300}" python3 benchmarks/probe_lut_shrink.py ${LUT_ARGS:-} 2>&1 | tee "$out/probe_lut_shrink.log" | tail -30; fi
if has expand; then say "LUT expand probe"
  timeout "${E_T:-240}" python3 benchmarks/probe_lut_expand.py ${EXPAND_ARGS:-} 2>&1 | tee "$out/probe_lut_expand.log" | tail -12; fi
if has fused; then say "fused base + expand probe"
  timeout "${F_T:-300}" python3 benchmarks/probe_fused_delta.py ${FUSED_ARGS:-} 2>&1 | tee "$out/probe_fused_delta.log" | tail -30; fi
say done
