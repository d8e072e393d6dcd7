"""Probe: one process's time to read a base's state dict from a store (what every process pays before it
serves anything: imports, numba's cached kernels found or compiled, the objects decoded). Run it twice a
variant, variants alternating, to see a per-process cost such as a kernel numba does not find in its cache
(twenty-third session: the palette join, ~0.4 s a process).

    python benchmarks/probe_base_load.py [--home .deltastore-demo/home] [--ref smollm2-135m@v1]
"""

from __future__ import annotations

import argparse
import time

t0 = time.perf_counter()

import deltastore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default=".deltastore-demo/home")
    ap.add_argument("--ref", default="smollm2-135m@v1")
    args = ap.parse_args()
    sd = deltastore.open(args.home).state_dict(args.ref)
    print(f"{len(sd)} tensors in {time.perf_counter() - t0:.2f} s (the process's imports included)")


if __name__ == "__main__":
    main()
