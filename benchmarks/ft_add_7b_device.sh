#!/bin/bash
# Issue 7, thirteenth session: the lossless fine-tune add on the device's 16 cores, as that session
# measured it (raw_h200/s13, scaling_h200.md top). Carry .whl-store/deps (and OLD_SITE if given):
#   [PARTS=stages,ab,full,shards,ab32,stages32,gil32] bash benchmarks/ft_add_7b_device.sh OUT [OLD_SITE]
# 1. stages: where a 12-layer add's time goes, thread by thread over time (OUT/stages12.md; ~2 min);
# 2. ab: with OLD_SITE (a `pip install --no-deps --target DIR` of another commit), it, HEAD and HEAD with
#    DELTASTORE_CHUNK_HELPERS=all, 12 layers, two alternating rounds (OUT/ab_scaling.md; ~6.5 min);
# 3. full: HEAD on the full 7B shape, 32 layers (13.5 GB; 51 GB of disk), one round (OUT/l32_scaling.md; ~6 min;
#    the model made under /tmp/stg/model, kept for stages32);
# 4. shards: with OLD_SITE, HEAD and it on 12 layers in 3 safetensors files (an add streams every shard
#    through one window since df464d2; before, each shard drained the workers), two rounds
#    (OUT/shards_scaling.md; ~5 min).
# 5. ab32 (fourteenth session): with OLD_SITE, HEAD and it on the full 7B shape, the two adds only, ROUNDS (2)
#    alternating rounds; the model is made under /tmp/stg/model (kept for stages32; ~7.5 min);
# 5b. abc32 (fifteenth session): ab32 with a second older install (OLD2_SITE=DIR) as "before2", ROUNDS
#    alternating rounds (default 2; OUT/abc32_adds.md; ~6.5 min with the model made);
# 5c. adds32 (fifteenth session): HEAD alone, the two adds, ROUNDS rounds (default 2; OUT/adds32.md; ~4 min
#    with the model made); since then every timed op of bench_scaling starts after a sync (its time printed);
# 5d. close32 (sixteenth session): HEAD on the full 7B shape, every op (both adds and checkouts), ROUNDS rounds,
#    zipnn 0.5.4 at 16 threads beside (installed from .whl-store/sdist); with BENCH_WARMUP=1 the adds once first
#    (OUT/close32.md; ~6 min with the model made);
# 5e. scale4 (sixteenth session): HEAD and zipnn over 16, 8, 4, 2, 1 workers on 4 layers (OUT/scale4.md; ~5 min).
# 6. stages32: where a 32-layer fine-tune add's time goes, thread by thread (OUT/stages32.md; reuses
#    /tmp/stg/model if the machine still holds it, else makes it: ~2 or ~6 min).
# 7. gil32: py-spy (nonblocking, GIL-held samples) over add base + add fine-tune of the 32-layer model at 16
#    threads (OUT/gil32.md; carry .whl-store/tools too; reuses /tmp/stg/model as stages32 does).
# BENCH_WARMUP=1: the adds parts (ab32, abc32, adds32) add the model once, untimed, first (bench_scaling --warmup).
# BENCH_FAST_DATA=1 (passed through to bench_scaling.make_pair): the model made on every core (~250 s on one for
# 32 layers; on 16 not yet timed; other bytes from the same distribution; the fourteenth session used the default).
# Each part fits one device call of 10 minutes, not all three: pick with PARTS. The old install's path is
# given with the device's dependency folder after it (OLD:/tmp/site): on its own it imports without them.
# A fresh machine compiles numba's kernels first (~30 s per install): the timeouts leave room for it.
set -u
out=${1:-/tmp/out}; old=${2:-}; parts=${PARTS:-stages}
mkdir -p "$out"
bash benchmarks/run_device.sh setup >/dev/null
source /tmp/ds/env
{ nproc; uptime; df -h /tmp | tail -1; } > "$out/machine.txt"
if [[ ,$parts, == *,stages,* ]]; then
  timeout 240 python3 benchmarks/probe_ft_add_stages.py --layers 12 --threads 16 --ops add_ft --work /tmp/stg \
    > "$out/stages12.md" 2>&1
  grep -E "^### " "$out/stages12.md"
  rm -rf /tmp/stg
fi
if [[ ,$parts, == *,ab,* && -n "$old" ]]; then
  timeout 560 python3 benchmarks/bench_scaling.py --layers 12 --workers 16 --variant "before=$(realpath "$old"):/tmp/site:16" \
    --env-variant 'all-helpers=DELTASTORE_CHUNK_HELPERS=all:16' --rounds 2 --work /tmp/scale --out "$out/ab_scaling.md" \
    > "$out/ab_scaling.log" 2>&1
  grep -E "median|failed" "$out/ab_scaling.log" | cut -c1-200
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,full,* ]]; then
  timeout 420 python3 benchmarks/bench_scaling.py --layers 32 --workers 16 --model /tmp/stg/model --work /tmp/scale --out "$out/l32_scaling.md" \
    > "$out/l32_scaling.log" 2>&1
  grep -E '^\{|failed' "$out/l32_scaling.log" | cut -c1-330
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,shards,* && -n "$old" ]]; then
  timeout 560 python3 benchmarks/bench_scaling.py --layers 12 --shards 3 --workers 16 \
    --variant "before=$(realpath "$old"):/tmp/site:16" --rounds 2 --work /tmp/scale --out "$out/shards_scaling.md" \
    > "$out/shards_scaling.log" 2>&1
  grep -E "median|failed" "$out/shards_scaling.log" | cut -c1-200
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,ab32,* && -n "$old" ]]; then
  timeout 480 python3 benchmarks/bench_scaling.py --layers 32 --workers 16 --adds-only ${BENCH_WARMUP:+--warmup} --model /tmp/stg/model \
    --variant "before=$(realpath "$old"):/tmp/site:16" --rounds "${ROUNDS:-2}" --work /tmp/scale --out "$out/ab32_adds.md" \
    > "$out/ab32_adds.log" 2>&1
  grep -E "median|failed|^\{" "$out/ab32_adds.log" | cut -c1-250
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,abc32,* && -n "$old" && -n "${OLD2_SITE:-}" ]]; then
  timeout 480 python3 benchmarks/bench_scaling.py --layers 32 --workers 16 --adds-only ${BENCH_WARMUP:+--warmup} --model /tmp/stg/model \
    --variant "before=$(realpath "$old"):/tmp/site:16" --variant "before2=$(realpath "$OLD2_SITE"):/tmp/site:16" \
    --rounds "${ROUNDS:-2}" --work /tmp/scale --out "$out/abc32_adds.md" > "$out/abc32_adds.log" 2>&1
  grep -E "median|failed|^\{" "$out/abc32_adds.log" | cut -c1-250
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,adds32,* ]]; then
  timeout 400 python3 benchmarks/bench_scaling.py --layers 32 --workers 16 --adds-only ${BENCH_WARMUP:+--warmup} --model /tmp/stg/model \
    --rounds "${ROUNDS:-2}" --work /tmp/scale --out "$out/adds32.md" > "$out/adds32.log" 2>&1
  grep -E "median|failed|^\{|^sync" "$out/adds32.log" | cut -c1-250
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,close32,* || ,$parts, == *,scale4,* ]]; then  # zipnn 0.5.4 beside, from its sdist (no index here)
  python3 -m pip install -q --no-deps --no-index --no-build-isolation .whl-store/sdist/zipnn-0.5.4.tar.gz 2>&1 | tail -1
fi
if [[ ,$parts, == *,close32,* ]]; then
  timeout 540 python3 benchmarks/bench_scaling.py --layers 32 --workers 16 ${BENCH_WARMUP:+--warmup} --rounds "${ROUNDS:-2}" \
    --model /tmp/stg/model --work /tmp/scale --out "$out/close32.md" > "$out/close32.log" 2>&1
  grep -E "median|failed|^\{|^sync|zipnn" "$out/close32.log" | cut -c1-330
  rm -rf /tmp/scale
fi
if [[ ,$parts, == *,scale4,* ]]; then
  timeout 540 python3 benchmarks/bench_scaling.py --layers 4 --workers 16,8,4,2,1 --work /tmp/scale4 --out "$out/scale4.md" \
    > "$out/scale4.log" 2>&1
  grep -E "failed|^\{|zipnn" "$out/scale4.log" | cut -c1-330
  rm -rf /tmp/scale4
fi
if [[ ,$parts, == *,stages32,* ]]; then
  timeout 420 python3 benchmarks/probe_ft_add_stages.py --layers 32 --threads 16 --ops add_ft --work /tmp/stg \
    > "$out/stages32.md" 2>&1
  grep -E "^### " "$out/stages32.md"
fi
if [[ ,$parts, == *,gil32,* ]]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/spy .whl-store/tools/py_spy-*.whl >/dev/null 2>&1
  PATH=/tmp/spy/bin:$PATH timeout 480 python3 benchmarks/profile_gil.py --layers 32 --threads 16 --ops add_base,add_ft \
    --rate 100 --nonblocking --work /tmp/stg --top 20 --out "$out/gil32.md" > "$out/gil32.log" 2>&1
  tail -3 "$out/gil32.log" | cut -c1-400
fi
uptime >> "$out/machine.txt"
