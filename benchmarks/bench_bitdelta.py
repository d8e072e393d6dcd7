"""Lazy bitdelta kernel at Llama-2-7B layer shapes: base alone vs base + sign-bit deltas.

    python benchmarks/bench_bitdelta.py --out benchmarks/results/bitdelta_h200.md   # on the GPU
    TRITON_INTERPRET=1 python benchmarks/bench_bitdelta.py --smoke                  # CPU check of this script
    python benchmarks/bench_bitdelta.py --sweep ...   # also a table a case: a few launch configs each
    TRITON_INTERPRET=1 python benchmarks/bench_bitdelta.py --smoke --sweep          # CPU check of the sweep

The layer of bench_kernels.py (q/k/v and gate/up as one GEMM each, o, down; bf16, attention left
out), ``--copies`` copies in one CUDA graph so neither weights nor sign bits come from L2. Each
linear: cuBLAS ``x W^T`` in bf16, then the bitdelta kernel (kernels/bitdelta.py) adds ``a (x S^T)``
for the rows of its fine-tune into a float32 output (the path a lazy model's DeltaLinear takes:
float32 base output plus the delta, rounded once). Cases: M rows of one fine-tune, and M rows over
T fine-tunes (one launch per loaded fine-tune, each told ceil(M / T) rows are its slot's, as
BitDeltaSet.delta tells it: its row blocks then take only its slot's rows). Every configuration is
checked against the torch reference before it is timed.

``--sweep``: for each case, a handful of launch configs (kernels/bitdelta.LaunchConfig: path,
block sizes, split-K, warps, stages) around the default that pick_config gives, each applied to
every linear of the layer (split-K "auto": auto_split for that linear's shape), checked, timed,
and tabled with the default marked; what to change the defaults to is read from those tables.

The bytes floor beside each figure: every weight byte and every sign byte the pass must read once,
at the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kernels import GROUPS, SMOKE_GROUPS, copy_bandwidth, emit, time_graph  # noqa: E402

from deltastore.kernels import bitdelta as bd  # noqa: E402


def make_copy(groups, n_tenants: int, gen: torch.Generator, device: torch.device):  # noqa: ANN001
    """One layer: per group its bf16 base weight (sum out, in) and n_tenants sign-bit deltas."""
    out = []
    for _, outs, n in groups:
        m = sum(outs)
        W = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16).to(device)
        fs = [bd.BitDeltaSigns((m, n), torch.randint(-2**31, 2**31 - 1, (m, -(-n // 32)), generator=gen, dtype=torch.int32).to(device),
                               1e-3 * (t + 1)) for t in range(n_tenants)]
        out.append((W, fs))
    return out


def layer_fn(copies, x_by_n: dict, ids: torch.Tensor, with_deltas: bool, use_triton: bool = True, cand=None):  # noqa: ANN001
    """One pass over the copies; ``cand``: a sweep candidate (None: the kernel's default launch)."""
    T = len(copies[0][0][1])
    rows = -(-ids.shape[0] // T)  # what BitDeltaSet.delta tells each launch

    def run() -> None:
        for layer in copies:
            for W, fs in layer:
                x = x_by_n[W.shape[1]]
                if not with_deltas:
                    torch.nn.functional.linear(x, W)
                    continue
                y = torch.nn.functional.linear(x, W).float()
                cfg = None if cand is None else cand.config(x.shape[0], rows, *W.shape, x)
                for slot, f in enumerate(fs):
                    if use_triton:
                        bd.apply_triton(x, f, ids, slot, y, rows=rows, config=cfg)
                    else:
                        bd.apply_ref(x, f, ids, slot, y)
    return run


def reference(copies, x_by_n: dict, ids: torch.Tensor) -> list[torch.Tensor]:  # noqa: ANN001
    """The torch reference's delta for each of the first copy's linears."""
    out = []
    for W, fs in copies[0]:
        x = x_by_n[W.shape[1]]
        b = torch.zeros(x.shape[0], W.shape[0], device=x.device)
        for slot, f in enumerate(fs):
            bd.apply_ref(x, f, ids, slot, b)
        out.append(b)
    return out


def check(copies, x_by_n: dict, ids: torch.Tensor, refs: list[torch.Tensor] | None = None, cand=None) -> float:  # noqa: ANN001
    """Worst |kernel - reference| / max |reference| over the first copy's linears."""
    refs = refs if refs is not None else reference(copies, x_by_n, ids)
    T = len(copies[0][0][1])
    rows = -(-ids.shape[0] // T)
    worst = 0.0
    for (W, fs), b in zip(copies[0], refs):
        x = x_by_n[W.shape[1]]
        a = torch.zeros(x.shape[0], W.shape[0], device=x.device)
        cfg = None if cand is None else cand.config(x.shape[0], rows, *W.shape, x)
        for slot, f in enumerate(fs):
            bd.apply_triton(x, f, ids, slot, a, rows=rows, config=cfg)
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
    return worst


@dataclass(frozen=True)
class Candidate:
    """A sweep's launch config, given as changes to the default one (``split_k`` None: auto_split
    for each linear's shape and the blocks chosen)."""

    changes: tuple = ()
    split_k: int | None = None

    def config(self, M: int, rows: int, N: int, K: int, x: torch.Tensor) -> bd.LaunchConfig:
        base = bd.pick_config(M, N, K, x.dtype, rows, bd._sms(x))
        cfg = dataclasses.replace(base, **dict(self.changes))
        split = self.split_k or bd.auto_split(cfg.path, cfg.block_m, cfg.block_n, cfg.block_k, rows, N, K, bd._sms(x))
        return dataclasses.replace(cfg, split_k=split)

    def label(self) -> str:
        parts = [f"{k}={v}" for k, v in self.changes] + ([f"split_k={self.split_k}"] if self.split_k else [])
        return ", ".join(parts) or "default"


def candidates(rows: int) -> list[Candidate]:
    """At most 10 configs around the default for a slot of ``rows`` rows (each compiles on the
    device: the whole sweep stays within a few minutes)."""
    C = Candidate
    if rows <= bd.GEMV_MAX_ROWS:  # the GEMV kernel, and tl.dot on a padded 16-row block
        return [C(), C((("block_n", 32),)), C((("block_n", 128),)), C((("block_k", 256),)), C((("num_warps", 2),)),
                C(split_k=1), C(split_k=16),
                C((("path", "dot"), ("block_m", 16), ("block_n", 64), ("block_k", 128), ("num_stages", 3))),
                C((("path", "dot"), ("block_m", 16), ("block_n", 32), ("block_k", 128), ("num_stages", 3))),
                C((("path", "dot"), ("block_m", 16), ("block_n", 64), ("block_k", 256), ("num_stages", 3)))]
    if rows <= 32:  # tl.dot 16/32-row blocks; the GEMV kernel at a few rows
        out = [C(), C((("block_n", 32),)), C((("block_n", 128),)), C((("block_k", 64),)), C((("block_k", 256),)),
               C((("num_stages", 2),)), C((("num_stages", 4),)), C((("num_warps", 8),)), C(split_k=1)]
        if rows <= 4:
            out.append(C((("path", "gemv"), ("block_m", 1 << (rows - 1).bit_length()), ("block_n", 64), ("block_k", 128), ("num_stages", 1))))
        return out
    return [C(), C((("block_n", 64),)), C((("block_k", 128),)), C((("num_warps", 4 if rows > 64 else 8),)),
            C((("num_stages", 4),)), C((("num_stages", 2),)), C(split_k=1),
            C((("block_m", 64 if rows > 64 else 128), ("num_warps", 4 if rows > 64 else 8))),
            C((("block_m", 32), ("block_n", 64), ("block_k", 128), ("num_warps", 4)))]


def sweep(case: str, copies, x_by_n: dict, ids: torch.Tensor, smoke: bool, base: float | None) -> tuple[str, list]:  # noqa: ANN001
    """A table of the case's candidates: us a layer, x base, error; the default marked *."""
    T = len(copies[0][0][1])
    rows = -(-ids.shape[0] // T)
    refs = reference(copies, x_by_n, ids)
    lines = [f"\n#### case {case}: {rows} rows a fine-tune (default per linear: "
             + "; ".join(f"{W.shape[0]}x{W.shape[1]} {bd.pick_config(ids.shape[0], W.shape[0], W.shape[1], x_by_n[W.shape[1]].dtype, rows, bd._sms(W)).label()}"
                         for W, _ in copies[0]) + ")\n",
             "| config (changes to the default) | base + bitdelta, us | x base | kernel vs reference (max rel) |", "|---|---|---|---|"]
    data = []
    for cand in candidates(rows):
        err = check(copies, x_by_n, ids, refs, cand)
        mark = " *" if not cand.changes and cand.split_k is None else ""
        if err > 1e-5:
            lines.append(f"| {cand.label()}{mark} | failed the check: {err:.2e} | - | - |")
            data.append({"case": case, "config": cand.label(), "default": bool(mark), "rel_err": err, "failed": True})
            continue
        if smoke:
            lines.append(f"| {cand.label()}{mark} | checked | - | {err:.1e} |")
            data.append({"case": case, "config": cand.label(), "default": bool(mark), "rel_err": err})
            continue
        t = time_graph(layer_fn(copies, x_by_n, ids, True, cand=cand)) / len(copies)
        lines.append(f"| {cand.label()}{mark} | {t * 1e6:.1f} | x{t / base:.2f} | {err:.1e} |")
        data.append({"case": case, "config": cand.label(), "default": bool(mark), "with_us": t * 1e6, "x_base": t / base, "rel_err": err})
    return "\n".join(lines) + "\n", data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="1,16,256,32x8", help="M (rows of one fine-tune) or MxT (M rows over T fine-tunes)")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, no timing (a CPU check under TRITON_INTERPRET=1)")
    ap.add_argument("--sweep", action="store_true", help="also time a few launch configs a case (a table each, the default marked *)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    groups = SMOKE_GROUPS if args.smoke else GROUPS
    copies_n = 1 if args.smoke else args.copies
    if not args.smoke and dev.type != "cuda":
        raise SystemExit("timing needs a GPU; --smoke checks the script on the CPU (TRITON_INTERPRET=1)")
    bw = copy_bandwidth(dev) if dev.type == "cuda" else float("nan")
    gen = torch.Generator().manual_seed(0)
    rows, data, sweeps = [], [], []
    for case in args.cases.split(","):
        M, _, T = case.partition("x")
        M, T = int(M), int(T or 1)
        copies = [make_copy(groups, T, gen, dev) for _ in range(copies_n)]
        x_by_n = {n: torch.randn(M, n, generator=gen).to(torch.bfloat16).to(dev) for _, _, n in groups}
        ids = (torch.arange(M) % T).to(dev)
        err = check(copies, x_by_n, ids)
        if err > 1e-5:
            raise SystemExit(f"case {case}: kernel differs from the reference by {err:.2e} of max")
        if args.smoke:
            rows.append(f"| {case} | checked: {err:.1e} | - | - | - |")
            if args.sweep:
                text, d = sweep(case, copies, x_by_n, ids, True, None)
                sweeps.append(text)
                data.extend(d)
            continue
        base = time_graph(layer_fn(copies, x_by_n, ids, False)) / copies_n
        withd = time_graph(layer_fn(copies, x_by_n, ids, True)) / copies_n
        if args.sweep:
            text, d = sweep(case, copies, x_by_n, ids, False, base)
            sweeps.append(text)
            data.extend(d)
        w_bytes = sum(W.numel() * 2 for W, _ in copies[0])
        s_bytes = sum(f.signs.numel() * 4 for _, fs in copies[0] for f in fs)
        floor_b, floor_d = w_bytes / bw, (w_bytes + s_bytes) / bw
        rows.append(f"| {case} | {base * 1e6:.1f} (floor {floor_b * 1e6:.1f}) | {withd * 1e6:.1f} (floor {floor_d * 1e6:.1f}) "
                    f"| x{withd / base:.2f} | {err:.1e} |")
        data.append({"case": case, "base_us": base * 1e6, "with_us": withd * 1e6, "floor_base_us": floor_b * 1e6,
                     "floor_with_us": floor_d * 1e6, "rel_err": err})
    head = (f"device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu (smoke)'}, torch {torch.__version__}, "
            f"copy bandwidth {bw / 1e12:.2f} TB/s, {copies_n} layer copies a graph\n\n"
            "| case (M or MxT) | base alone, us | base + bitdelta, us | x base | kernel vs reference (max rel) |\n"
            "|---|---|---|---|---|\n")
    emit(head + "\n".join(rows) + "\n" + "".join(sweeps), args.out, args.json, data)


if __name__ == "__main__":
    main()
