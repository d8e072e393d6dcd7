"""Probe (issue 12, run 64): which groups the sparse-group rule (codec/_zstd_encode.py) makes again, and what it
saves, at SPARSE_RATIO 4..64, on a pair (fine-tune, its base) or two saves of a series.

The Python path's rule (``planes._sparse_groups``, the same frames as the compiled loop's) is watched with the ratio
at 1, so every group with a zstd-coded low plane is made again at level 1 and each ratio's groups are read off: the
share of the elements made twice (the encode's extra work) and the bytes saved against the frames without the rule.

    python benchmarks/probe_sparse_rule.py FINE_TUNE.safetensors BASE.safetensors
"""
from __future__ import annotations

import os
import sys

sys.path.append(os.path.dirname(os.path.abspath(__file__)))

os.environ["DELTASTORE_NUMBA"] = "0"  # the Python path, whose rule reads the ratio when it runs
os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402

from deltastore.codec import _zstd_encode, planes  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402
from probe_decode_user_sys import changed_bf16  # noqa: E402


def main() -> None:
    finetune, base = sys.argv[1], sys.argv[2]
    rows = []  # per group: elements, low and high frame bytes without the rule, then with it
    rule = planes._sparse_groups

    def watched(again, grouped, spans, frames) -> None:  # noqa: ANN001
        before = [len(f) for f in frames]
        rule(again, grouped, spans, frames)
        rows.extend((k, before[2 * g + 1], before[2 * g], len(frames[2 * g + 1]), len(frames[2 * g]))
                    for g, (_c, k) in enumerate(spans))

    planes._sparse_groups = watched
    _zstd_encode.SPARSE_RATIO = 1  # every zstd-coded group made again: each ratio's share read off below
    for t, b in changed_bf16(finetune, base):
        Lossless().encode(t, b)
    k, lo0, hi0, lo1, hi1 = np.array(rows, dtype=np.int64).T
    total = int((lo0 + hi0).sum())
    print(f"{finetune} against {base}: {len(k)} groups, {int(k.sum()):,} elements, frames without the rule {total:,} bytes")
    for ratio in (4, 8, 16, 32, 64):
        sel = (lo0 > 0) & (lo0 < k) & (lo0 * ratio < k)
        saved = int(((lo0 - lo1) + (hi0 - hi1))[sel].sum())
        print(f"ratio {ratio}: groups {int(sel.sum())}, elements made twice {k[sel].sum() / k.sum():.3f}, "
              f"bytes saved {saved:,} ({100 * saved / total:.2f}%)")


if __name__ == "__main__":
    main()
