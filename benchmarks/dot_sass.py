"""Registers and static SASS of the tl.dot expand, and of the GEMV expand whose tail it now shares,
in this tree against another copy of kernels/triton_ops.py (no GPU needed).

    git show HEAD:kernels/triton_ops.py > benchmarks/_old_triton_ops.py
    PYTHONPATH=/tmp/tr36 .venv/bin/python benchmarks/dot_sass.py [--old benchmarks/_old_triton_ops.py]

Compiles for sm_90 with the installed Triton (3.6 on the device) through benchmarks/kernel_sass.py's
``compile_sass`` (the argument specializations a launch gets), a delta-come set at 1/16 (tiers of 8,
3 and 2 bits in one compile), bf16. For each kernel: registers / stack as launched, the whole
kernel's instruction count, and the inner loop (the backward branch with the most HMMA, or FFMA
for the GEMV) with its HMMA / LDG counts.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_sass import _INS, SIG_E, compile_sass, loops  # noqa: E402

from deltastore.kernels import triton_ops  # noqa: E402

SIG_D = {"z_ptr": "*fp32", "y_ptr": "*bf16", "part_ptr": "*fp32", "sem_ptr": "*i32", "words_ptr": "*i32", "scales_ptr": "*fp16",
         "zeros_ptr": "*fp16", "tiers_ptr": "*i64", "ntiers_ptr": "*i32", "ranks_ptr": "*i32", "nblk_ptr": "*i32",
         "rows_ptr": "*i32", "blocks_ptr": "*i32", "counts_ptr": "*i32", "starts_ptr": "*i32", "mout_ptr": "*i32", "coloff_ptr": "*i32",
         "M": "i32", "ZC": "i32", "Ntot": "i32", "NB_max": "i32", "n_slices": "i32", "R_max": "i32", "J_max": "i32", "chunk": "i32",
         "stride_ym": "i32"}
SIG_SD = {"x_ptr": "*bf16", "z_ptr": "*fp32", "words_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "svals_ptr": "*fp32",
          "tiles_ptr": "*i64", "ntiles_ptr": "*i32", "rows_ptr": "*i32", "counts_ptr": "*i32", "starts_ptr": "*i32",
          "M": "i32", "K": "i32", "ZC": "i32", "n_slices": "i32", "T_max": "i32", "stride_xm": "i32"}
HAS = {f"HAS{b}": b in (8, 3, 2) for b in (1, 2, 3, 4, 8)}


def load(path: str):
    """Another copy of triton_ops as a module of deltastore.kernels (its relative imports resolve)."""
    spec = importlib.util.spec_from_file_location("deltastore.kernels._triton_ops_other", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def summary(sass: str, key: str) -> str:
    total = sum(1 for _ in _INS.finditer(sass))
    cands = loops(sass)
    if not cands:
        return f"{total} | - | - | -"
    keys = ("HMMA", "HGMMA") if key == "HMMA" else (key,)
    body = max(cands, key=lambda c: (sum(c[2][k] for k in keys), -sum(c[2].values())))[2]
    return f"{total} | {sum(body.values())} | {' + '.join(f'{body[k]} {k}' for k in keys)} | {body['LDG']}"


def plan() -> None:
    """The tl.dot path's work split at one Llama-2-7B layer's groups (host arithmetic on the shapes
    and the codec's tier counts at 1/16; the same calls shrink() and expand() make)."""
    import torch
    from bench_kernels import GROUPS, random_packed

    from deltastore.kernels import DeltaSet, plan_rows
    from deltastore.kernels.deltaset import plan_blocks

    T = triton_ops
    gen = torch.Generator().manual_seed(0)
    print("| group | M / tenants | rows a block | shrink split (programs with rows) | expand run, runs (programs) | partials (MB) |")
    print("|---|---|---|---|---|---|")
    for name, ms, K in GROUPS:
        pks = [[random_packed(m, K, gen, torch.device("cpu")) for m in ms] for _ in range(8)]
        for M, nt in ((16, 1), (64, 1), (256, 1), (32, 8)):
            ds = DeltaSet(K, ms, "cpu")
            for t in range(nt):
                ds.add(pks[t])
            ds.build()
            bm = T._block_m(T.rows_per_slot(M, ds))
            sk = T.pick_split_k(M, ds, "dot")
            run = T.dot_chunk(M, ds, bm, ds.block_k, 32)
            J = -(-ds.max_rank // run)
            rb = plan_blocks(plan_rows(torch.arange(M) % nt, nt), bm).shape[0]
            work = ds.n_tiles(ds.tile_r) * -(-T.rows_per_slot(M, ds) // bm) * sk
            progs = sum(-(-m // ds.block_k) for m in ms) * J * rb
            print(f"| {name} | {M} / {nt} | {bm} | {sk} ({work}) | {run}, {J} ({progs}) | {J * M * sum(ms) * 4 / 1e6 if J > 1 else 0:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_old_triton_ops.py"))
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--dot", default="16/4/32/2/4:16/8/32/2/4,64/1/32/2/4:64/4/32/2/8,64/1/32/2/4:64/3/32/2/8",
                    help="dot expand pairs OLD:NEW, each rows a block / shrink split / components a step / stages / warps "
                         "(the defaults: each code's choice at M = 16, 64 and 256 (q/k/v))")
    ap.add_argument("--no-gemv", action="store_true", help="skip the GEMV expand")
    ap.add_argument("--plan", action="store_true", help="only the dot path's default split at Llama-2-7B shapes (no compile)")
    args = ap.parse_args()
    if args.plan:
        plan()
        return
    mods = [("old", load(args.old)), ("new", triton_ops)]
    import triton

    print(f"triton {triton.__version__}, sm_90; GEMV expand {args.warps} warps; old = {args.old}")
    print("| kernel | code | rows a block | regs as launched | instructions | inner loop | its HMMA / FFMA | its LDG |")
    print("|---|---|---|---|---|---|---|---|")
    for pair in args.dot.split(","):
        for (name, mod), spec in zip(mods, pair.split(":")):
            bm, sk, br, ns, nw = (int(v) for v in spec.split("/"))
            ce = dict(NFIELD=9, SPLIT_K=sk, BLOCK_M=bm, BLOCK_R=br, BLOCK_N=128, UPCAST=False, GATHER=False, **HAS)
            sass, res = compile_sass(mod._expand_kernel, SIG_D, ce, nw, ns, None)
            print(f"| dot expand | {name} | {bm} (split {sk}, er {br}, stages {ns}, warps {nw}) | {res} | {summary(sass, 'HMMA')} |", flush=True)
    for bm, nws in ((16, (4, 4)), (64, (4, 8))):  # the shrink's code is unchanged: its warps at 64 rows are
        for (name, mod), nw in zip(mods, nws):
            ce = dict(NFIELD=9, SPLIT_K=4, BLOCK_M=bm, BLOCK_R=32, BLOCK_K=128, UPCAST=False, GATHER=False, **HAS)
            sass, res = compile_sass(mod._shrink_kernel, SIG_SD, ce, nw, 2, None)
            print(f"| dot shrink | {name} | {bm} (warps {nw}) | {res} | {summary(sass, 'HMMA')} |", flush=True)
    for bm in () if args.no_gemv else (1, 4):
        for name, mod in mods:
            ce = dict(NFI=11, SPLIT_K=4, BLOCK_M=bm, BLOCK_R=64, BLOCK_N=128, FAST=True, **HAS)
            sass, res = compile_sass(mod._gemv_expand_kernel, SIG_E, ce, args.warps, 3, 1 if bm == 1 else None)
            ops = collections.Counter(m.group(3).split(".")[0] for m in _INS.finditer(sass))
            print(f"| gemv expand | {name} | {bm} | {res} | {summary(sass, 'FFMA')} |  ({ops['ATOM'] + ops['ATOMG'] + ops['RED']} atomics)", flush=True)


if __name__ == "__main__":
    main()
