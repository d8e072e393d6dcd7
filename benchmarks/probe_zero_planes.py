"""Probe (issue 12): the lossless codec's format v4 (zero planes: plane mode 3, no payload) against
v3 on a real fine-tune, bytes and decode time, with zipnn's decode of the file beside them.

Per round, alternating in one process, one thread: zipnn 0.5.4 decompressing the fine-tune file;
the store's decode of the changed bf16 tensors against SmolLM2's base into reused arrays (no new
pages, so user time is the decoding), from the v3 payloads and from the v4 ones. Each payload is
checked against the fine-tune's bits first.

    python benchmarks/probe_zero_planes.py [--rounds 9] [--finetune FILE]
"""
from __future__ import annotations

import gc
import os
import time

os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from probe_decode_user_sys import changed_bf16, probe_args  # noqa: E402

from deltastore.codec import from_bytes, planes, to_bytes  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402


def main() -> None:
    args = probe_args(__doc__)
    torch.set_num_threads(1)
    from zipnn import ZipNN

    pairs = changed_bf16(args.finetune)
    raw = sum(t.numel() * 2 for t, _ in pairs)
    codecs = {"v3": Lossless(zero_planes=False), "v4": Lossless()}
    encs = {k: [from_bytes(to_bytes(c.encode(t, b))) for t, b in pairs] for k, c in codecs.items()}
    reused = [np.empty(t.numel() * 2, np.uint8) for t, _ in pairs]
    dec = Lossless()
    for k in codecs:
        for e, (t, b), o in zip(encs[k], pairs, reused):
            assert np.array_equal(dec._raw(e, b, o), t.contiguous().view(torch.uint8).numpy().reshape(-1)), k
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    data = open(args.finetune, "rb").read()
    comp = z.compress(bytearray(data))
    assert bytes(z.decompress(comp)) == data
    nbytes = {k: sum(len(to_bytes(e)) for e in v) for k, v in encs.items()}
    modes = {k: [m for e in v for c in planes.read_info(memoryview(e.arrays["stream"].numpy())).modes for m in c] for k, v in encs.items()}
    print(f"{len(pairs)} changed bf16 tensors, {raw / 1e6:.1f} MB; zipnn: the file, {len(data) / 1e6:.1f} MB "
          f"({len(comp) / 1e6:.2f} MB compressed)")
    for k in codecs:
        print(f"- {k}: {nbytes[k]:,} bytes ({nbytes[k] / len(comp):.4f}x zipnn's), {len(modes[k]):,} planes, "
              f"{modes[k].count(planes.ZERO_MODE):,} zero planes")
    kinds = ["zipnn", "v3", "v4"]
    user: dict[str, list[float]] = {k: [] for k in kinds}
    wall: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            gc.collect()
            t0, w0 = os.times(), time.perf_counter()
            if k == "zipnn":
                out = z.decompress(comp)
            else:
                out = [dec._raw(e, b, o) for e, (_, b), o in zip(encs[k], pairs, reused)]
            w1, t1 = time.perf_counter(), os.times()
            user[k].append(t1.user - t0.user)
            wall[k].append(w1 - w0)
            del out
    print()
    print(f"decode, {args.rounds} alternating rounds, one thread; MB/s of output (zipnn: the file, {len(data) / 1e6:.1f} MB; "
          f"v3/v4: the changed tensors, {raw / 1e6:.1f} MB), median and best:")
    print()
    print("| decode | user s median | MB/s by user time, median / best | MB/s by wall time, median / best |")
    print("|---|---|---|---|")
    for k in kinds:
        n = (len(data) if k == "zipnn" else raw) / 1e6
        u, w = sorted(user[k]), sorted(wall[k])
        print(f"| {k} | {u[len(u) // 2]:.3f} | {n / max(u[len(u) // 2], 0.01):,.0f} / {n / max(u[0], 0.01):,.0f} | "
              f"{n / w[len(w) // 2]:,.0f} / {n / w[0]:,.0f} |")
    r = [a / b for a, b in zip(wall["v4"], wall["v3"])]
    print()
    print(f"v4 / v3 wall time, round by round: {', '.join(f'{x:.3f}' for x in r)} (median {sorted(r)[len(r) // 2]:.3f})")


if __name__ == "__main__":
    main()
