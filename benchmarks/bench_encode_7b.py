#!/usr/bin/env python
"""Encode time of delta-come (alpha = 1/16) on a Llama-2-7B-shaped synthetic fine-tune.

32 layers of q, k, v, o (4096 x 4096), gate, up (11008 x 4096) and down (4096 x 11008): 224
matrices, 6.5e9 parameters. Generated on the device layer by layer (not timed):

* base W: Gaussian, std 0.02, bf16;
* delta D = A diag(s) B^T with A, B Gaussian (columns of norm ~1), s_i = i^-0.6, scaled so that
  ||D|| / ||W|| = 1e-2; the fine-tune is (W + D) rounded to bf16 (so the codec sees the bf16
  rounding noise a real fine-tune has);
* calibration Hessians (``gptq`` modes): H = X^T X / T from T synthetic correlated activations
  X = (Z P) diag(c) + 0.1 Z' (a rank-256 shared component with power-law column scales plus
  isotropic noise), one per distinct layer input (qkv, o, gate/up, down), as a model's inputs
  would share them.

Modes: ``data-free`` or ``gptq`` x ``svd=lowrank|full``. Each mode encodes layers in order until
it has spent ``--mode-budget`` seconds (or all 32 layers); a mode that stops early reports the
measured layers and the total EXTRAPOLATED to 32 layers (the table says which).

    python benchmarks/bench_encode_7b.py --modes data-free:lowrank,data-free:full,gptq:lowrank
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHAPES = [("q", 4096, 4096, "attn"), ("k", 4096, 4096, "attn"), ("v", 4096, 4096, "attn"),
          ("o", 4096, 4096, "o"), ("gate", 11008, 4096, "mlp"), ("up", 11008, 4096, "mlp"),
          ("down", 4096, 11008, "down")]
LAYERS = 32


def make_pair(m, n, seed, dev, power=0.6, rel=1e-2, scale_div=1):
    import torch

    g = torch.Generator(device=dev).manual_seed(seed)
    m2, n2 = m // scale_div, n // scale_div
    W = (torch.randn(m2, n2, generator=g, device=dev) * 0.02)
    k = min(m2, n2)
    s = torch.arange(1, k + 1, device=dev, dtype=torch.float32) ** -power
    A = torch.randn(m2, k, generator=g, device=dev) / math.sqrt(m2)
    B = torch.randn(n2, k, generator=g, device=dev) / math.sqrt(n2)
    D = (A * s) @ B.T
    D *= rel * torch.linalg.vector_norm(W) / torch.linalg.vector_norm(D)
    base = W.to(torch.bfloat16)
    target = (W + D).to(torch.bfloat16)
    return target, base


def make_hessian(n, seed, dev, tokens=8192, rank=256):
    import torch

    g = torch.Generator(device=dev).manual_seed(seed)
    P = torch.randn(rank, n, generator=g, device=dev) / math.sqrt(rank)
    c = (torch.arange(1, n + 1, device=dev, dtype=torch.float32) ** -0.3)[torch.randperm(n, generator=g, device=dev)]
    H = torch.zeros(n, n, device=dev)
    for t0 in range(0, tokens, 2048):
        Z = torch.randn(2048, rank, generator=g, device=dev)
        X = (Z @ P) * c + 0.1 * torch.randn(2048, n, generator=g, device=dev)
        H.addmm_(X.T, X)
    return H / tokens


def run_mode(mode, svd, args, dev):
    import torch
    from deltastore.codec import EncodeContext, get_codec

    codec = get_codec("delta-come", alpha=1 / 16, svd=svd)
    per_kind = {k: 0.0 for k, *_ in SHAPES}
    gen_s = hess_s = 0.0
    errs = []
    done = 0
    bytes_total = numel_total = 0
    t_mode = time.perf_counter()
    for layer in range(LAYERS):
        if done and time.perf_counter() - t_mode > args.mode_budget:
            break
        hs = {}
        if mode == "gptq":
            torch.cuda.synchronize()
            t = time.perf_counter()
            for key, n in (("attn", 4096), ("o", 4096), ("mlp", 4096), ("down", 11008)):
                hs[key] = make_hessian(n, 1000 * layer + {"attn": 1, "o": 2, "mlp": 3, "down": 4}[key], dev, tokens=args.calib_tokens)
            torch.cuda.synchronize()
            hess_s += time.perf_counter() - t
        for i, (kind, m, n, hkey) in enumerate(SHAPES):
            torch.cuda.synchronize()
            t = time.perf_counter()
            target, base = make_pair(m, n, 100 * layer + i, dev)
            torch.cuda.synchronize()
            gen_s += time.perf_counter() - t
            t = time.perf_counter()
            enc = codec.encode(target, base, EncodeContext(name=f"{layer}.{kind}", hessian=hs.get(hkey), device=dev))
            torch.cuda.synchronize()
            per_kind[kind] += time.perf_counter() - t
            bytes_total += enc.nbytes
            numel_total += m * n
            if layer == 0:
                D = target.float() - base.float()
                Dh = codec.decode_delta(enc, device=dev)
                errs.append((kind, float(torch.linalg.vector_norm(D - Dh) / torch.linalg.vector_norm(D))))
            del target, base, enc
        done += 1
        hs.clear()
    enc_s = sum(per_kind.values())
    return {
        "mode": mode, "svd": svd, "layers_measured": done, "encode_s_measured": enc_s,
        "encode_s_32_layers": enc_s * LAYERS / done, "extrapolated": done < LAYERS,
        "per_kind_s_per_matrix": {k: v / done for k, v in per_kind.items()},
        "hessian_gen_s_per_layer": hess_s / done if mode == "gptq" else None,
        "data_gen_s": gen_s, "bpp": 8 * bytes_total / numel_total,
        "layer0_rel_err": dict(errs), "wall_s": time.perf_counter() - t_mode,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="data-free:lowrank,data-free:full,gptq:lowrank,gptq:full")
    ap.add_argument("--mode-budget", type=float, default=90.0, help="seconds of encoding per mode before extrapolating")
    ap.add_argument("--calib-tokens", type=int, default=8192)
    ap.add_argument("--cpu-matrix", action="store_true", help="also time one 4096x4096 encode on the CPU")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    sys.path.append(str(REPO))  # (last: ./kernels must not shadow HF's kernels package)
    try:
        import deltastore.codec  # noqa: F401  (installed, e.g. editable)
    except ImportError:  # a bare checkout: the package maps deltastore.codec to codec/ at the root
        import deltastore

        deltastore.__path__.append(str(REPO))
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    dev = torch.device("cuda")
    env = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cpu_threads": torch.get_num_threads()}
    print(json.dumps(env), file=sys.stderr, flush=True)
    # warm-up (cuSOLVER / cuBLAS handles, kernels) so the first mode is not charged for it
    from deltastore.codec import EncodeContext, get_codec

    t, b = make_pair(4096, 4096, 7, dev)
    for svd in ("lowrank", "full"):
        get_codec("delta-come", svd=svd).encode(t, b, EncodeContext(device=dev, hessian=make_hessian(4096, 1, dev, 2048)))
    torch.cuda.synchronize()
    rows = []
    for spec in args.modes.split(","):
        mode, svd = spec.split(":")
        r = run_mode(mode, svd, args, dev)
        rows.append(r)
        print(f"[7b] {mode:9s} svd={svd:7s} layers {r['layers_measured']:2d} encode {r['encode_s_measured']:.1f}s "
              f"-> 32 layers {r['encode_s_32_layers']:.1f}s{' (extrapolated)' if r['extrapolated'] else ''} "
              f"per matrix {json.dumps({k: round(v, 3) for k, v in r['per_kind_s_per_matrix'].items()})} "
              f"bpp {r['bpp']:.4f} err0 {json.dumps({k: round(v, 4) for k, v in r['layer0_rel_err'].items()})}",
              file=sys.stderr, flush=True)
    cpu = None
    if args.cpu_matrix:
        t, b = make_pair(4096, 4096, 7, dev)
        t, b = t.cpu(), b.cpu()
        cpu = {}
        for svd in ("lowrank", "full"):
            t0 = time.perf_counter()
            get_codec("delta-come", svd=svd).encode(t, b, EncodeContext(device="cpu"))
            cpu[svd] = time.perf_counter() - t0
        print(f"[7b] CPU one 4096x4096 data-free encode: {cpu}", file=sys.stderr, flush=True)
    lines = ["| mode | svd | layers measured | encode s (measured) | encode s, 32 layers | per matrix s (q / k / v / o / gate / up / down) | bpp all-in | layer-0 rel err (q, gate, down) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pk = r["per_kind_s_per_matrix"]
        e = r["layer0_rel_err"]
        lines.append(f"| {r['mode']} | {r['svd']} | {r['layers_measured']} | {r['encode_s_measured']:.1f} | "
                     f"{r['encode_s_32_layers']:.1f}{' (extrapolated)' if r['extrapolated'] else ''} | "
                     + " / ".join(f"{pk[k]:.3f}" for k, *_ in SHAPES)
                     + f" | {r['bpp']:.4f} | {e['q']:.4f}, {e['gate']:.4f}, {e['down']:.4f} |")
    table = "\n".join(lines)
    print(table)
    res = {"env": env, "rows": rows, "cpu_4096_data_free_s": cpu}
    print(json.dumps(res))
    out = Path(args.out or os.environ.get("OUT") or ".")
    (out / "encode_7b.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "encode_7b_table.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
