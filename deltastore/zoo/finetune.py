"""Full-parameter fine-tunes of an HF causal LM on the zoo tasks.

``finetune(base_dir, out_dir, task="math"|"bible", ...)`` trains every
parameter with AdamW (float32 master weights; bf16 autocast on CUDA) and
writes ``out_dir`` with exactly the base's layout and dtype: same tensor
names/shards, config and tokenizer files copied byte for byte, so the only
difference between the two directories is what training changed.

CLI::

    python -m deltastore.zoo.finetune --task math --steps 40 --out DIR [--device cuda]

fine-tunes SmolLM2-135M-Instruct (cached bf16 dir, or ``--base DIR``),
evaluates base and fine-tune on the task's metric and prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

from . import tasks
from ._hfdir import save_like

__all__ = ["finetune", "evaluate", "DEFAULTS", "main"]

# defaults per task: (steps, batch_size, seq_len, lr)
DEFAULTS = {
    "math": dict(steps=30, batch_size=4, seq_len=160, lr=2e-4),
    "bible": dict(steps=40, batch_size=4, seq_len=128, lr=5e-5),
}


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    if steps <= warmup:
        return lr
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))  # cosine to 10%


def _math_batches(tok, batch_size: int, seq_len: int, seed: int, steps: int):
    import torch

    n = max(256, steps * batch_size)
    pool = []
    for p in tasks.math_train(n, seed=seed):
        ids, plen = tasks.math_example(tok, p)
        if len(ids) <= seq_len:
            pool.append((ids, plen))
    if not pool:
        raise ValueError(f"no math example fits in seq_len={seq_len}")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    i = 0
    while True:
        batch = pool[i: i + batch_size]
        if len(batch) < batch_size:
            i = 0
            random.Random(seed + 1).shuffle(pool)
            continue
        i += batch_size
        L = max(len(ids) for ids, _ in batch)
        x = torch.full((batch_size, L), pad, dtype=torch.long)
        y = torch.full((batch_size, L), -100, dtype=torch.long)
        m = torch.zeros((batch_size, L), dtype=torch.long)
        for r, (ids, plen) in enumerate(batch):  # right padding for training
            t = torch.tensor(ids)
            x[r, : len(ids)] = t
            m[r, : len(ids)] = 1
            y[r, plen: len(ids)] = t[plen:]
        yield x, m, y


def _bible_batches(tok, batch_size: int, seq_len: int, seed: int, kjv=None):
    import torch

    train, _ = tasks.bible_split(kjv)
    stream = tasks.bible_token_stream(tok, train)
    it = tasks.iter_windows(stream, seq_len, seed)
    while True:
        x = torch.tensor([next(it) for _ in range(batch_size)], dtype=torch.long)
        yield x, torch.ones_like(x), x.clone()


def finetune(base_dir, out_dir, task: str = "math", steps: int | None = None,
             batch_size: int | None = None, seq_len: int | None = None, lr: float | None = None,
             seed: int = 0, device: str = "cpu", *, warmup: int | None = None,
             weight_decay: float = 0.0, grad_clip: float = 1.0, kjv=None, log_every: int = 0,
             threads: int | None = None) -> dict:
    """Full-parameter fine-tune of ``base_dir`` on ``task``; writes ``out_dir``.

    Returns ``{"task", "steps", "batch_size", "seq_len", "lr", "seed",
    "device", "time_s", "s_per_step", "loss_first", "loss_last", "loss_min",
    "losses", "out_dir"}`` (``loss_first``/``loss_last`` are means over the
    first/last 5 steps).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .smollm2 import load_tokenizer

    if task not in DEFAULTS:
        raise ValueError(f"task must be one of {sorted(DEFAULTS)}, not {task!r}")
    d = DEFAULTS[task]
    steps = d["steps"] if steps is None else steps
    batch_size = d["batch_size"] if batch_size is None else batch_size
    seq_len = d["seq_len"] if seq_len is None else seq_len
    lr = d["lr"] if lr is None else lr
    warmup = max(1, min(10, steps // 10)) if warmup is None else warmup
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(seed)

    tok = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model.to(dev)
    model.train()
    model.config.use_cache = False
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=weight_decay, **({"fused": True} if dev.type == "cuda" else {}))
    if task == "math":
        batches = _math_batches(tok, batch_size, seq_len, seed, steps)
    else:
        batches = _bible_batches(tok, batch_size, seq_len, seed, kjv)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
           else torch.autocast("cpu", enabled=False))
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        x, m, y = next(batches)
        x, m, y = x.to(dev), m.to(dev), y.to(dev)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        with amp:
            out = model(input_ids=x, attention_mask=m, labels=y)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps - 1):
            el = time.perf_counter() - t0
            print(f"[finetune {task}] step {step + 1}/{steps} loss {losses[-1]:.4f} "
                  f"({el / (step + 1):.2f} s/step)", file=sys.stderr, flush=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    model.eval()
    save_like(base_dir, out_dir, model.state_dict())
    k = min(5, len(losses)) or 1
    return {
        "task": task, "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
        "seed": seed, "device": str(dev), "time_s": round(elapsed, 2),
        "s_per_step": round(elapsed / max(1, steps), 3),
        "loss_first": sum(losses[:k]) / k if losses else None,
        "loss_last": sum(losses[-k:]) / k if losses else None,
        "loss_min": min(losses) if losses else None,
        "losses": [round(v, 4) for v in losses], "out_dir": str(out_dir),
    }


def evaluate(model_dir, task: str, device: str = "cpu", n: int | None = None,
             batch_size: int | None = None, kjv=None, max_new_tokens: int = 64) -> float:
    """The task metric of a saved model: math accuracy on the first ``n`` of
    the 500 held-out problems, or the bible held-out NLL (nats/token)."""
    import torch
    from transformers import AutoModelForCausalLM

    from .smollm2 import load_tokenizer

    dev = torch.device(device)
    dtype = torch.float32 if dev.type == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(dev).eval()
    tok = load_tokenizer(model_dir)
    if task == "math":
        probs = tasks.math_heldout(n or tasks.MATH_HELDOUT_N)
        return tasks.eval_math(model, tok, probs, batch_size=batch_size or 32, device=dev,
                               max_new_tokens=max_new_tokens)
    _, texts = tasks.bible_split(kjv)
    return tasks.eval_nll(model, tok, texts, batch_size=batch_size or 8, device=dev)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deltastore.zoo.finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=sorted(DEFAULTS), default="math")
    ap.add_argument("--out", required=True, help="output HF directory")
    ap.add_argument("--base", default=None, help="base HF dir (default: cached SmolLM2 bf16)")
    ap.add_argument("--gguf", default=None, help="SmolLM2 GGUF file (instead of PyPI)")
    ap.add_argument("--kjv", default=None, help="path to kjv.jsonl (instead of PyPI)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--eval-n", type=int, default=None,
                    help="math: evaluate on the first N held-out problems (default 500)")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)

    from .smollm2 import smollm2_dir

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = Path(args.base) if args.base else smollm2_dir(gguf=args.gguf)
    res = finetune(base, args.out, task=args.task, steps=args.steps, batch_size=args.batch_size,
                   seq_len=args.seq_len, lr=args.lr, seed=args.seed, device=args.device,
                   kjv=args.kjv, log_every=10)
    res.pop("losses")
    res["base_dir"] = str(base)
    if not args.no_eval:
        t = time.perf_counter()
        metric = "accuracy" if args.task == "math" else "heldout_nll"
        res["metric"] = metric
        res["base_" + metric] = evaluate(base, args.task, args.device, args.eval_n, kjv=args.kjv)
        res["finetune_" + metric] = evaluate(args.out, args.task, args.device, args.eval_n,
                                             kjv=args.kjv)
        res["eval_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
