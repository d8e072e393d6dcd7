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
MARK = "---- pytest output ----\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", required=True)
    ap.add_argument("--slug", default="amd-epyc-2c")
    ap.add_argument("-k", default=None, help="only these tests (pytest -k)")
    ap.add_argument("--summarize-only", action="store_true", help="rewrite the summary from the output already saved")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-m", "", "-rA", "-s", "-q", "-p", "no:cacheprovider",
           "--hypothesis-show-statistics"] + (["-k", a.k] if a.k else [])
    dest = ROOT / "benchmarks" / "results" / f"reliability_{a.slug}.txt"
    if a.summarize_only:  # the summary again, from the pytest output already in dest
        head, _, out = dest.read_text().partition(MARK)
        rc, secs = re.search(r"exit status (-?\d+), (\d+) s", head).groups()
        rc, secs = int(rc), float(secs)
    else:
        t0 = time.time()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        out, rc, secs = r.stdout + r.stderr, r.returncode, time.time() - t0
    passed = re.findall(r"^PASSED (\S+)", out, re.M)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, re.M)
    kills = [p for p in passed if "test_kill_9" in p]
    hyp = [int(n) for n in re.findall(r"(\d+) passing, \d+ failing", out)]
    lines = [f"# reliability suite ({a.machine})", "",
             f"command: python benchmarks/bench_reliability.py --machine {a.machine!r} --slug {a.slug}" + (f" -k {a.k!r}" if a.k else ""),
             f"pytest: {' '.join(cmd[1:])}", f"exit status {rc}, {secs:.0f} s", "",
             f"tests passed: {len(passed)}, failed: {len(failed)}",
             f"kill -9 points survived: {len(kills)}",
             f"hypothesis cases (passing) per property: {hyp} (total {sum(hyp)})",
             *[m.strip(".") for m in re.findall(r"^\.*((?:sqlite\+local|postgres\+s3) .*)$", out, re.M)], "", MARK + out]
    dest.write_text("\n".join(lines))
    print("\n".join(lines[:12]))
    sys.exit(rc)


if __name__ == "__main__":
    main()
