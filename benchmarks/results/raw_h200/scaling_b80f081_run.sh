#!/bin/bash
# issue 7 scaling rerun on the H200 device's CPUs: HEAD's wheel (built from a clean worktree of
# a607cd8, the wheel here) beside zipnn 0.5.4 and the old code (b05c9ea), 4 layers; bench processes run in /tmp
R=$PWD; T0=$SECONDS; TAG=${1:-b80f081}
python3 -m pip install -q --no-deps --no-index $R/.whl-store/deps/*.whl 2>&1 | tail -1
python3 -m pip install -q --no-deps --no-index --no-build-isolation $R/.whl-store/sdist/zipnn-0.5.4.tar.gz 2>&1 | tail -1
python3 -m pip install -q --no-deps --no-index $R/.whl-store/head4/deltastore-*.whl 2>&1 | tail -1
python3 -m pip install -q --no-deps --no-index --target /tmp/old $R/.whl-store/old/*.whl 2>&1 | tail -1
{ lscpu; uname -r; df -T /tmp; nproc; python3 -c "import sys, numba, numpy, zstandard; print(sys.version); print('numba', numba.__version__, 'numpy', numpy.__version__, 'zstandard', zstandard.__version__)"; } > $OUT/scaling_${TAG}_machine.txt 2>&1
echo "installs: $((SECONDS-T0)) s"
cd /tmp && PYTHONUNBUFFERED=1 timeout ${2:-450} python3 $R/benchmarks/bench_scaling.py --layers 4 --workers 16,8,4,2,1 \
  --old-site /tmp/old --old-workers 16 --work /tmp/scale --out $OUT/scaling_${TAG}_4layers.md 2>&1 | tee $OUT/scaling_${TAG}_4layers.log
echo "total: $((SECONDS-T0)) s"
