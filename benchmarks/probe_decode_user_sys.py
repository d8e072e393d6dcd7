"""Probe (issue 12, decode speed): the fine-tune decode against zipnn's, each round's CPU time split
into user and system time (os.times), so the page faults of fresh output memory (system time on this
VM, varying ~8x between rounds) are seen apart from the decoding itself.

Per round, alternating: zipnn 0.5.4 decompressing the fine-tune file (one fresh buffer); the store's
lossless (v3) decode of the changed tensors against SmolLM2's base into fresh arrays kept until the
round ends (as a state dict keeps them); the same into reused arrays (no new pages). One thread.

    python benchmarks/probe_decode_user_sys.py [--rounds 9] [--finetune FILE]
"""
from __future__ import annotations

import argparse
import gc
import os
import resource

os.environ.setdefault("DELTASTORE_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from deltastore.codec import from_bytes, to_bytes  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402
from deltastore.zoo.smollm2 import smollm2_dir  # noqa: E402


def faults() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt + r.ru_majflt


#: the dense 40-step SmolLM2 fine-tune these probes decode (made by bench_lossless.py's series)
FINETUNE = os.path.expanduser("~/.cache/deltastore/bench/smollm2-math-40-b4-lr4e-4/model.safetensors")


def probe_args(doc: str) -> argparse.Namespace:
    """The decode probes' options: --rounds, --finetune."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--finetune", default=FINETUNE)
    return ap.parse_args()


def changed_bf16(finetune: str, base_file: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(fine-tune tensor, base tensor) for every bf16 tensor the fine-tune changed; the base is
    ``base_file`` (a safetensors file), SmolLM2's by default."""
    base = load_file(base_file or str(smollm2_dir() / "model.safetensors"))
    ft = load_file(finetune)
    return [(ft[n], base[n]) for n in ft if n in base and ft[n].dtype == torch.bfloat16 and not torch.equal(ft[n], base[n])]


def main() -> None:
    args = probe_args(__doc__)
    torch.set_num_threads(1)
    from zipnn import ZipNN

    c = Lossless(zero_planes=False)  # v3, as run 58 measured (the default writes v4 since run 61)
    pairs = changed_bf16(args.finetune)
    encs = [from_bytes(to_bytes(c.encode(t, b))) for t, b in pairs]
    raw = sum(t.numel() * 2 for t, _ in pairs)
    reused = [np.empty(t.numel() * 2, np.uint8) for t, _ in pairs]
    z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=1)
    data = open(args.finetune, "rb").read()
    comp = z.compress(bytearray(data))
    assert bytes(z.decompress(comp)) == data
    for e, (t, b), o in zip(encs, pairs, reused):
        assert np.array_equal(c._raw(e, b, o), t.contiguous().view(torch.uint8).numpy().reshape(-1))
    print(f"{len(pairs)} changed bf16 tensors, {raw / 1e6:.1f} MB; zipnn: the file, {len(data) / 1e6:.1f} MB "
          f"({len(comp) / 1e6:.1f} MB compressed); v3 payloads {sum(len(to_bytes(e)) for e in encs) / 1e6:.1f} MB")
    kinds = ["zipnn", "v3, fresh arrays", "v3, reused arrays"]
    rows: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            gc.collect()
            f0, t0 = faults(), os.times()
            if k == "zipnn":
                out, n = z.decompress(comp), len(data)
            elif k.endswith("fresh arrays"):
                out, n = [c._raw(e, b) for e, (_, b) in zip(encs, pairs)], raw
            else:
                out, n = [c._raw(e, b, o) for e, (_, b), o in zip(encs, pairs, reused)], raw
            t1 = os.times()
            rows[k].append((n / 1e6, t1.user - t0.user, t1.system - t0.system, faults() - f0))
            del out
    print()
    print("MB/s per core over user + system time, over user time alone; system seconds; page faults (median of rounds):")
    print()
    print("| decode | best, user + system | median, user + system | best, user alone | median, user alone | system s (min-max) | faults |")
    print("|---|---|---|---|---|---|---|")
    for k, v in rows.items():
        tot = sorted(mb / (u + s) for mb, u, s, _ in v)
        usr = sorted(mb / max(u, 0.01) for mb, u, _, _ in v)
        sy = [s for _, _, s, _ in v]
        print(f"| {k} | {tot[-1]:,.0f} | {tot[len(v) // 2]:,.0f} | {usr[-1]:,.0f} | {usr[len(v) // 2]:,.0f} | "
              f"{min(sy):.2f}-{max(sy):.2f} | {sorted(f for *_, f in v)[len(v) // 2]:,} |")
    print()
    print("Rounds (MB/s user + system / user alone):")
    for k, v in rows.items():
        print(f"- {k}: " + ", ".join(f"{mb / (u + s):,.0f}/{mb / max(u, 0.01):,.0f}" for mb, u, s, _ in v))


if __name__ == "__main__":
    main()
