"""End to end through the store at Llama-2-7B layer shapes: add base, add finetune (delta-come,
encoded on the GPU when there is one), checkout, verify. Sizes and wall-clock times.

    python benchmarks/bench_store_gpu.py --layers 8 --work /tmp/ds7b

Synthetic weights, made on the fly and written tensor by tensor: base Gaussian (std 0.02); the
fine-tune adds to every linear a delta A diag(i^-0.6) B^T scaled to ||D|| / ||W|| = 1e-2 (a
decaying spectrum like real fine-tunes'), and a 1e-3 relative perturbation to the embeddings;
norms untouched. --layers N keeps N of Llama-2-7B's 32 layers (embeddings and lm_head are full size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from deltastore.safetensors_io import build_header

H, I, V = 4096, 11008, 32000


def layer_shapes(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    out = [("model.embed_tokens.weight", (V, H))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (H,)), (f"{p}.self_attn.q_proj.weight", (H, H)),
                (f"{p}.self_attn.k_proj.weight", (H, H)), (f"{p}.self_attn.v_proj.weight", (H, H)),
                (f"{p}.self_attn.o_proj.weight", (H, H)), (f"{p}.post_attention_layernorm.weight", (H,)),
                (f"{p}.mlp.gate_proj.weight", (I, H)), (f"{p}.mlp.up_proj.weight", (I, H)),
                (f"{p}.mlp.down_proj.weight", (H, I))]
    return out + [("model.norm.weight", (H,)), ("lm_head.weight", (V, H))]


def make_pair(work: Path, layers: int, dev: torch.device) -> tuple[Path, Path, int]:
    shapes = layer_shapes(layers)
    names = [(n, "BF16", s) for n, s in shapes]
    head, _ = build_header(names, {"format": "pt"})
    dirs = [work / "base", work / "ft"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": H, "num_hidden_layers": layers}))
    g = torch.Generator(device=dev).manual_seed(0)
    with open(dirs[0] / "model.safetensors", "wb") as fb, open(dirs[1] / "model.safetensors", "wb") as ff:
        fb.write(head)
        ff.write(head)
        for name, shape in shapes:
            if len(shape) == 1:
                w = torch.ones(shape, device=dev) + 0.01 * torch.randn(shape, generator=g, device=dev)
                f = w
            else:
                w = 0.02 * torch.randn(shape, generator=g, device=dev)
                if "embed" in name or "lm_head" in name:
                    d = 1e-3 * w.std() * torch.randn(shape, generator=g, device=dev)
                else:
                    m, n = shape
                    r = min(m, n)
                    a = torch.linalg.qr(torch.randn(m, r, generator=g, device=dev))[0]
                    b = torch.linalg.qr(torch.randn(n, r, generator=g, device=dev))[0]
                    s = torch.arange(1, r + 1, device=dev, dtype=torch.float32) ** -0.6
                    d = (a * s) @ b.T
                    d *= 1e-2 * w.norm() / d.norm()
                f = w + d
            fb.write(w.to(torch.bfloat16).cpu().view(torch.uint8).numpy().tobytes())
            ff.write(f.to(torch.bfloat16).cpu().view(torch.uint8).numpy().tobytes())
    nbytes = (dirs[0] / "model.safetensors").stat().st_size
    return dirs[0], dirs[1], nbytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--work", default="/tmp/ds7b")
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    ap.add_argument("--no-checkout", action="store_true", help="stop after the adds (saves device time)")
    args = ap.parse_args()
    import deltastore
    from deltastore.report import version_report

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    base, ft, nbytes = make_pair(work, args.layers, dev)
    res: dict = {"layers": args.layers, "model_bytes": nbytes, "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                 "threads": os.cpu_count(), "make_s": round(time.perf_counter() - t0, 1)}
    st = deltastore.open(work / "home")
    t = time.perf_counter()
    vb = st.add_base("llama7b-shaped", base)
    res["add_base_s"] = round(time.perf_counter() - t, 2)
    res["base_stored_bytes"] = vb.stored_bytes
    t = time.perf_counter()
    vf = st.add_finetune("ft", ft, base=vb.ref)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    res["add_finetune_s"] = round(time.perf_counter() - t, 2)
    res["ft_stored_bytes"] = vf.stored_bytes
    rep = version_report(st, vf.ref)
    res["ratio_whole"] = round(rep["ratio_whole"], 2)
    res["ratio_linears"] = round(rep["ratio_linears"], 2)
    errs = [x["rel_error"] for x in rep["tensors"] if x["rel_error"] is not None]
    res["mean_rel_error"] = round(sum(errs) / len(errs), 4)
    bpps = [x["bpp"] for x in rep["tensors"] if x["codec"] == "delta-come"]
    res["mean_bpp_linears"] = round(sum(bpps) / len(bpps), 4)
    res["add_base_GBps"] = round(nbytes / res["add_base_s"] / 1e9, 3)
    res["add_finetune_GBps"] = round(nbytes / res["add_finetune_s"] / 1e9, 3)
    res["extrapolated_32_layers_add_finetune_s"] = round(
        res["add_finetune_s"] * (32 * 202.4e6 + 2 * 131e6) / (args.layers * 202.4e6 + 2 * 131e6), 1)
    if args.no_checkout:
        print(json.dumps(res, indent=1))
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1))
        return
    t = time.perf_counter()
    st.checkout(vf.ref, work / "out")
    res["checkout_finetune_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    res["verify_ok"] = st.verify().ok
    res["verify_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(res, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
