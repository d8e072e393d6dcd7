"""Lazy bitdelta kernel at Llama-2-7B layer shapes: base alone vs base + sign-bit deltas.

    python benchmarks/bench_bitdelta.py --out benchmarks/results/bitdelta_h200.md   # on the GPU
    TRITON_INTERPRET=1 python benchmarks/bench_bitdelta.py --smoke                  # CPU check of this script

The layer of bench_kernels.py (q/k/v and gate/up as one GEMM each, o, down; bf16, attention left
out), ``--copies`` copies in one CUDA graph so neither weights nor sign bits come from L2. Each
linear: cuBLAS ``x W^T`` in bf16, then the bitdelta kernel (kernels/bitdelta.py) adds ``a (x S^T)``
for the rows of its fine-tune into a float32 output (the path a lazy model's DeltaLinear takes:
float32 base output plus the delta, rounded once). Cases: M rows of one fine-tune, and M rows over
T fine-tunes (one launch per loaded fine-tune, every launch reading every row: the kernel has no row
grouping yet). Every configuration is checked against the torch reference before it is timed.

The bytes floor beside each figure: every weight byte and every sign byte the pass must read once,
at the copy bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
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


def layer_fn(copies, x_by_n: dict, ids: torch.Tensor, with_deltas: bool, use_triton: bool = True):  # noqa: ANN001
    apply = bd.apply_triton if use_triton else bd.apply_ref

    def run() -> None:
        for layer in copies:
            for W, fs in layer:
                x = x_by_n[W.shape[1]]
                if not with_deltas:
                    torch.nn.functional.linear(x, W)
                    continue
                y = torch.nn.functional.linear(x, W).float()
                for slot, f in enumerate(fs):
                    apply(x, f, ids, slot, y)
    return run


def check(copies, x_by_n: dict, ids: torch.Tensor) -> float:  # noqa: ANN001
    """Worst |kernel - reference| / max |reference| over the first copy's linears."""
    worst = 0.0
    for W, fs in copies[0]:
        x = x_by_n[W.shape[1]]
        y0 = torch.zeros(x.shape[0], W.shape[0], device=x.device)
        a, b = y0.clone(), y0.clone()
        for slot, f in enumerate(fs):
            bd.apply_triton(x, f, ids, slot, a)
            bd.apply_ref(x, f, ids, slot, b)
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="1,16,256,32x8", help="M (rows of one fine-tune) or MxT (M rows over T fine-tunes)")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, no timing (a CPU check under TRITON_INTERPRET=1)")
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
    rows, data = [], []
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
            continue
        base = time_graph(layer_fn(copies, x_by_n, ids, False)) / copies_n
        withd = time_graph(layer_fn(copies, x_by_n, ids, True)) / copies_n
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
    emit(head + "\n".join(rows) + "\n", args.out, args.json, data)


if __name__ == "__main__":
    main()
