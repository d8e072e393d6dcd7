"""The store's reliability figures, from its own tests run in full (slow ones included):
processes x rounds of random add/rm/gc/tag/checkout held (SQLite + local disk; PostgreSQL +
SeaweedFS S3), kill -9 points survived, hostile inputs tried. Writes the pytest output, with the
machine and the command, to benchmarks/results/reliability_<machine>.txt.

    python benchmarks/bench_reliability.py --machine "dev VM: AMD EPYC 2 cores, shared"
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", required=True)
    ap.add_argument("--slug", default="amd-epyc-2c")
    ap.add_argument("-k", default=None, help="only these tests (pytest -k)")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-m", "", "-rA", "-s", "-q", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics"] + (["-k", a.k] if a.k else [])
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = r.stdout + r.stderr
    passed = re.findall(r"^PASSED (\S+)", out, re.M)
    kills = [p for p in passed if "test_kill_9" in p]
    hyp = [int(n) for n in re.findall(r"(\d+) passing examples", out)]
    lines = [f"# reliability suite ({a.machine})", "",
             f"command: {' '.join(['python', 'benchmarks/bench_reliability.py', '--machine', repr(a.machine)])}",
             f"pytest: {' '.join(cmd[1:])}", f"exit status {r.returncode}, {time.time() - t0:.0f} s", "",
             f"kill -9 points survived: {len(kills)}",
             f"hypothesis examples per property: {hyp} (total {sum(hyp)})",
             *[ln for ln in out.splitlines() if ln.startswith(("sqlite+local", "postgres+s3"))], "", "---- pytest output ----", out]
    dest = ROOT / "benchmarks" / "results" / f"reliability_{a.slug}.txt"
    dest.write_text("\n".join(lines))
    print("\n".join(lines[:12]))
    sys.exit(r.returncode)


if __name__ == "__main__":
    main()
