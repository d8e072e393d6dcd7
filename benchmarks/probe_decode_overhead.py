"""Probe (issue 12, decode speed): the Python time per tensor around the lossless decode's kernels.

    python benchmarks/probe_decode_overhead.py [--ft DIR] [--repeat N] [--ab REV] [--machine TEXT] [--note TEXT] [--out FILE]

The real 150-step fine-tune (``--ft``, safetensors; default
~/.cache/deltastore/bench/smollm2-math-150-b8-lr1e-4) against its base SmolLM2-135M-Instruct bf16
(``deltastore.zoo.smollm2``), loaded and paired as ``bench_lossless.py`` does (``changed_pairs``).
Every changed tensor is encoded with today's default (``Lossless()``, format v4) and handed to the
reader as the store hands it: a read-only ``memoryview`` past the object's 8-byte frame
(``ObjectDB.get_view``). Timed per tensor with ``timeit`` (gc off), best of ``--repeat``, wall
(``perf_counter``) and CPU (``process_time``) alike, one thread (DELTASTORE_THREADS=1):

- ``from_bytes(view, copy=False)``: the store's checkout parse (``materialize.tensor_bytes``):
  header JSON, its checks, array views, ``check_payload`` (the codec built from the params).
- ``planes.read_info``: the plane stream's header and chunk table, checked.
- ``lossless.unpack_counts``: format v3+'s context counts, checked.
- the whole decode as the store makes it: ``from_bytes(copy=False)``, the codec from the payload's
  params (``codec_class(...).from_config``), ``reconstruct_into`` the tensor's window of one buffer
  reused across repeats (a checkout's file window, without its page faults), so the share column
  is of the decode's own work.

Then the same three steps timed where the store runs them: inside that decode loop, each tensor's
steps right after the previous tensor's kernels (which stream megabytes through the caches), by
``perf_counter`` around each call, summed over the tensors, best of ``--repeat`` passes. (That
loop calls ``read_info`` and ``unpack_counts`` once more beside ``reconstruct_into``'s own calls,
which then find them warm: its total is not the store's, and is not reported.)

``--ab REV``: the same rows for codec/planes.py, serialize.py, lossless.py and _numba.py (the
kernels' wrappers) as they were at git revision REV (loaded beside today's as modules of their
own: :meth:`Code.at`), each repeat timing
every row for both in turn, so a burst of other load on a shared machine falls on both alike; then
a before/after table (best and median). The whole decode of REV's code is REV's ``from_bytes`` and
REV's ``Lossless`` (the store reaches it through ``codec_class(enc.codec)``).

``--stages``: instead, where the whole decode's time goes, by today's code: the real functions on
its path (the readers, ``Lossless._raw``, ``decode_grouped_diff``, ``grouped_chunk_planes``,
``_fill_planes``, the kernels' wrappers in ``codec._numba`` and the compiled kernels themselves)
wrapped, while the probe runs, in a timer that records each call's time and its own time (less
the wrapped calls inside it), summed over the tensors, best of ``--repeat`` passes of the store's
decode loop. A wrapper adds ~0.2-0.4 us a call, counted in its caller's own time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import timeit
from pathlib import Path

os.environ.setdefault("DELTASTORE_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench_lossless import changed_pairs  # noqa: E402
from deltastore.codec import from_bytes, lossless, planes, serialize, to_bytes  # noqa: E402
from deltastore.codec.lossless import Lossless  # noqa: E402
from deltastore.zoo.smollm2 import smollm2_dir  # noqa: E402

FT = Path("~/.cache/deltastore/bench/smollm2-math-150-b8-lr1e-4").expanduser()
ROOT = Path(__file__).resolve().parents[1]
FRAME = 8  # deltastore.objects' frame before a payload: get_view's memoryview starts past it


class Code:
    """The reading functions of one version of the codec: today's (the working tree), or those of a
    git revision loaded beside them (:meth:`at`) for an interleaved before/after in one process."""

    def __init__(self, label: str, serialize, planes_mod, lossless_mod):  # noqa: ANN001
        self.label = label
        self.from_bytes = serialize.from_bytes
        self.read_info = planes_mod.read_info
        self.unpack_counts = lossless_mod.unpack_counts
        self.lossless = lossless_mod.Lossless

    @classmethod
    def at(cls, rev: str) -> "Code":
        """codec/planes.py, serialize.py and lossless.py as they were at ``rev``, as modules of their
        own in the ``deltastore.codec`` package (so their relative imports find today's other
        modules); the old lossless module reads streams with the old planes module. The codec
        registry is left as it was (the old module's ``@register_codec`` is undone)."""
        import importlib.util
        import subprocess

        from deltastore.codec import registry

        mods = {}
        for name in ("planes", "serialize", "lossless"):
            src = subprocess.run(["git", "show", f"{rev}:codec/{name}.py"], cwd=ROOT, check=True, capture_output=True,
                                 text=True).stdout
            full = f"deltastore.codec._{name}_at_{rev}"
            mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(full, loader=None))
            mod.__package__ = "deltastore.codec"
            sys.modules[full] = mod
            saved = dict(registry._registry)
            exec(compile(src, f"{rev}:codec/{name}.py", "exec"), mod.__dict__)
            registry._registry.clear()
            registry._registry.update(saved)
            mods[name] = mod
        mods["lossless"].planes = mods["planes"]
        # the compiled kernels and their wrappers (codec/_numba.py) of ``rev`` too, from a file of their
        # own (numba caches a kernel by its file), as the old planes module's fast(); where ``rev`` has
        # the same file, today's module
        src = subprocess.run(["git", "show", f"{rev}:codec/_numba.py"], cwd=ROOT, check=True, capture_output=True,
                             text=True).stdout
        from deltastore.codec import _numba

        if src == Path(_numba.__file__).read_text():
            mods["planes"]._FAST = _numba
        else:
            path = Path(os.environ.get("TMPDIR", "/tmp")) / f"deltastore_numba_at_{rev}" / f"_numba_at_{rev}.py"
            path.parent.mkdir(exist_ok=True)
            if not path.exists() or path.read_text() != src:
                path.write_text(src)
            spec = importlib.util.spec_from_file_location(f"_numba_at_{rev}", path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            mods["planes"]._FAST = mod
        return cls(f"at {rev}", mods["serialize"], mods["planes"], mods["lossless"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ft", type=Path, default=FT, help="the fine-tune's HF directory (model.safetensors)")
    ap.add_argument("--repeat", type=int, default=5, help="timeit repeats (best of)")
    ap.add_argument("--number", type=int, default=20, help="passes over every tensor a repeat (the parsers)")
    ap.add_argument("--ab", metavar="REV", help="also time the reading code of git revision REV, rows interleaved")
    ap.add_argument("--stages", action="store_true", help="time the decode's functions one by one instead (today's code)")
    ap.add_argument("--machine", default=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    ap.add_argument("--note", default="", help="a line printed first (e.g. which code was timed)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    codes = [Code("today", serialize, planes, lossless)] + ([Code.at(args.ab)] if args.ab else [])
    base = load_file(str(smollm2_dir() / "model.safetensors"))
    ft = load_file(str(args.ft / "model.safetensors"))
    pairs = changed_pairs(base, ft)
    codec = Lossless()
    views = []
    for _, t, b in pairs:
        views.append(memoryview(bytes(FRAME) + to_bytes(codec.encode(t, b)))[FRAME:])
    encs = [from_bytes(v, copy=False) for v in views]
    streams = [memoryview(e.arrays["stream"].numpy()) for e in encs]
    infos = [planes.read_info(s) for s in streams]
    counts = [e.arrays["counts"].numpy() for e in encs]
    sizes = [t.numel() * t.element_size() for _, t, _ in pairs]
    offs = np.cumsum([0] + sizes).tolist()
    out = np.zeros(offs[-1], dtype=np.uint8)
    windows = [out[lo:hi] for lo, hi in zip(offs, offs[1:])]
    bases = [b for _, _, b in pairs]
    n = len(pairs)
    pc = time.perf_counter

    def rows_of(c: Code) -> list:
        def store_decode() -> None:  # materialize.tensor_bytes' calls, minus its manifest checks and sha256
            for v, b, w in zip(views, bases, windows):
                enc = c.from_bytes(v, copy=False)
                c.lossless.from_config(enc.params).reconstruct_into(enc, b, w)  # (codec_class(enc.codec) today)

        out[:] = 0
        store_decode()
        for (name, t, _), w in zip(pairs, windows):
            assert np.array_equal(w, t.reshape(-1).view(torch.uint8).numpy()), f"{name}: the decode is not exact"
        c_infos = [c.read_info(s) for s in streams]  # each code's own StreamInfo for its unpack_counts
        return [
            ("`from_bytes(view, copy=False)` (header, checks, views, check_payload)", args.number,
             lambda: [c.from_bytes(v, copy=False) for v in views]),
            ("`planes.read_info` (stream table)", args.number, lambda: [c.read_info(s) for s in streams]),
            ("`lossless.unpack_counts` (context counts)", args.number,
             lambda: [c.unpack_counts(k, i) for k, i in zip(counts, c_infos)]),
            ("whole decode as the store calls it (from_bytes + from_config + reconstruct_into)", 1, store_decode),
        ]

    def in_loop(c: Code) -> list[float]:  # the store's loop, each step's time summed over the tensors
        acc = [0.0, 0.0, 0.0]
        for v, b, w in zip(views, bases, windows):
            t0 = pc()
            enc = c.from_bytes(v, copy=False)
            t1 = pc()
            info = c.read_info(memoryview(enc.arrays["stream"].numpy()))
            t2 = pc()
            c.unpack_counts(enc.arrays["counts"].numpy(), info)
            t3 = pc()
            acc[0] += t1 - t0
            acc[1] += t2 - t1
            acc[2] += t3 - t2
            c.lossless.from_config(enc.params).reconstruct_into(enc, b, w)
        return acc

    if args.stages:
        return stages(args, views, bases, windows, say, argv, lines)
    rows = {c.label: rows_of(c) for c in codes}
    say(f"Command: `python benchmarks/probe_decode_overhead.py {shlex.join(argv if argv is not None else sys.argv[1:])}`  ")
    if args.note:
        say(f"{args.note}  ")
    say(f"Machine: {args.machine}; Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}; "
        f"load average at start {os.getloadavg()[0]:.2f}  ")
    say(f"{n} changed tensors of {args.ft.name} ({offs[-1] / 1e6:.1f} MB bf16), lossless v{encs[0].version} payloads "
        f"({sum(len(v) for v in views) / 1e6:.2f} MB, {sum(len(i.raw_lens) for i in infos)} chunks, "
        f"{sum(len(g) for i in infos for g in i.groups)} groups); timeit best of {args.repeat} "
        f"({args.number} passes over every tensor a repeat for the parsers, 1 for the whole decode), one thread"
        + (f"; today's code and the code at {args.ab} timed in turn, row by row, each repeat" if args.ab else "") + ".")
    say("")
    # {code: [(wall, cpu) per row]} and {code: [in-loop seconds per step]}, each a list over the repeats
    wall = {c.label: [[] for _ in rows[c.label]] for c in codes}
    cpu = {c.label: [[] for _ in rows[c.label]] for c in codes}
    loop = {c.label: [] for c in codes}
    for _ in range(args.repeat):  # interleaved: a burst of other load falls on every row alike
        for k in range(len(rows[codes[0].label])):
            for c in codes:
                _, number, fn = rows[c.label][k]
                wall[c.label][k].append(timeit.Timer(fn).timeit(number) / number / n)
                cpu[c.label][k].append(timeit.Timer(fn, timer=time.process_time).timeit(number) / number / n)
        for c in codes:
            loop[c.label].append(in_loop(c))
    for c in codes:
        best = [(min(w), min(u)) for w, u in zip(wall[c.label], cpu[c.label])]
        whole = best[-1]
        if len(codes) > 1:
            say(f"### {c.label}")
            say("")
        say("| per tensor | us, wall (best) | us, CPU (best) | share of the whole decode (CPU) |")
        say("|---|---:|---:|---:|")
        for (label, _, _), (w, u) in zip(rows[c.label], best):
            say(f"| {label} | {w * 1e6:.1f} | {u * 1e6:.1f} | {u / whole[1]:.1%} |")
        parts = sum(u for _, u in best[:3])
        say("")
        say(f"The three parsers together: {parts * 1e6:.1f} us a tensor, {parts / whole[1]:.1%} of the whole decode "
            f"({whole[1] * n * 1e3:.0f} ms CPU for the {n} tensors, {offs[-1] / whole[1] / n / 1e6:,.0f} MB/s).")
        say("")
        in_best = [min(col) for col in zip(*loop[c.label])]
        say(f"The same steps inside the store's decode loop (after the previous tensor's kernels), wall, best of "
            f"{args.repeat} passes over the tensors:")
        say("")
        say("| per tensor, in the decode loop | us, wall (best) | share of the whole decode (wall) |")
        say("|---|---:|---:|")
        for (label, _, _), t in zip(rows[c.label], in_best):
            say(f"| {label} | {t / n * 1e6:.1f} | {t / n / whole[0]:.1%} |")
        say(f"| the three together | {sum(in_best) / n * 1e6:.1f} | {sum(in_best) / n / whole[0]:.1%} |")
        say("")
    if len(codes) > 1:
        a, b = codes[1].label, codes[0].label
        say(f"Before ({a}) and after (today), us a tensor, best of {args.repeat} (median in brackets), wall:")
        say("")
        say("| per tensor | before | after | after / before (best) |")
        say("|---|---:|---:|---:|")

        def fmt(ts: list[float]) -> str:
            return f"{min(ts) * 1e6:.1f} ({sorted(ts)[len(ts) // 2] * 1e6:.1f})"

        for k, (label, _, _) in enumerate(rows[b]):
            say(f"| {label} | {fmt(wall[a][k])} | {fmt(wall[b][k])} | {min(wall[b][k]) / min(wall[a][k]):.2f} |")
        for k, (label, _, _) in enumerate(rows[b][:3]):
            ta, tb = [r[k] / n for r in loop[a]], [r[k] / n for r in loop[b]]
            say(f"| in the decode loop: {label} | {fmt(ta)} | {fmt(tb)} | {min(tb) / min(ta):.2f} |")
        ta, tb = [sum(r) / n for r in loop[a]], [sum(r) / n for r in loop[b]]
        say(f"| in the decode loop: the three together | {fmt(ta)} | {fmt(tb)} | {min(tb) / min(ta):.2f} |")
        say("")
    say(f"Load average at the end {os.getloadavg()[0]:.2f}.")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


def _stage_targets() -> list:
    """(module or class, attribute, label) of each function on the decode's path that --stages
    times; those the code does not have (another revision's names) are left out."""
    from deltastore.codec import _numba, _zstd

    return [
        (serialize, "from_bytes", "`serialize.from_bytes`"),
        (serialize, "_parse", "`serialize._parse` (header JSON, its checks)"),
        (serialize, "check_payload", "`checks.check_payload` (the codec from the params)"),
        (Lossless, "_raw", "`Lossless._raw` (its own Python)"),
        (planes, "read_info", "`planes.read_info`"),
        (lossless, "unpack_counts", "`lossless.unpack_counts`"),
        (lossless, "_base_u8", "`lossless._base_u8`"),
        (lossless, "decode_grouped_diff", "`lossless.decode_grouped_diff` (its own Python)"),
        (planes, "_map_chunks", "`planes._map_chunks`"),
        (lossless, "grouped_chunk_planes", "`lossless.grouped_chunk_planes`"),
        (planes, "_scratch", "`planes._scratch`"),
        (lossless, "_fill_planes", "`lossless._fill_planes`"),
        (_zstd, "frame_functions", "`_zstd.frame_functions`"),
        (_zstd, "thread_dctx", "`_zstd.thread_dctx`"),
        (_numba, "fill_frames", "`_numba.fill_frames` (wrapper)"),
        (_numba, "_fill_frames", "kernel `_fill_frames` (zstd frames)"),
        (_numba, "ungroup_undiff_stored", "`_numba.ungroup_undiff_stored` (wrapper)"),
        (_numba, "x512_frequent", "`_numba.x512_frequent` (compiled)"),
        (_numba, "_scratch16", "`_numba._scratch16`"),
        (_numba, "_ungroup_undiff2_stored_x512", "kernel `_ungroup_undiff2_stored_x512` (gather, undiff)"),
        (_numba, "_ungroup_undiff2_stored", "kernel `_ungroup_undiff2_stored` (gather, undiff)"),
        (lossless, "_decode_stored_chunk", "`lossless._decode_stored_chunk`"),
        (lossless, "_frame_table", "`lossless._frame_table`"),
        (_numba, "fill_undiff_stored", "`_numba.fill_undiff_stored` (wrapper)"),
        (_numba, "_fill_undiff2_stored", "kernel `_fill_undiff2_stored` (frames, gather, undiff)"),
        (_numba, "_fill_undiff2_stored_x512", "kernel `_fill_undiff2_stored_x512` (frames, gather, undiff)"),
    ]


def stages(args, views, bases, windows, say, argv, lines) -> int:  # noqa: ANN001
    """``--stages``: the store's decode loop with the functions of :func:`_stage_targets` timed."""
    pc = time.perf_counter
    targets = [(m, a, label) for m, a, label in _stage_targets() if a in vars(m)]
    incl = {label: 0.0 for _, _, label in targets}
    own = dict(incl)
    calls = dict.fromkeys(incl, 0)
    stack = [0.0]  # per open call: the time of the wrapped calls inside it

    def wrap(fn, label: str, static: bool):  # noqa: ANN001, ANN202
        def timed(*a, **k):  # noqa: ANN002, ANN003, ANN202
            stack.append(0.0)
            t0 = pc()
            try:
                return fn(*a, **k)
            finally:
                dt = pc() - t0
                inner = stack.pop()
                incl[label] += dt
                own[label] += dt - inner
                calls[label] += 1
                stack[-1] += dt
        return staticmethod(timed) if static else timed

    saved = []
    for m, a, label in targets:
        raw = vars(m)[a]
        saved.append((m, a, raw))
        if isinstance(raw, classmethod):
            setattr(m, a, classmethod(wrap(raw.__func__, label, False)))
        else:
            setattr(m, a, wrap(raw, label, isinstance(raw, staticmethod)))
    passes = []  # (wall, own, incl, calls) of each pass after the first (which warms)
    try:
        for r in range(args.repeat + 1):
            for d in (incl, own, calls):
                for k in d:
                    d[k] = 0
            t0 = pc()
            for v, b, w in zip(views, bases, windows):
                enc = serialize.from_bytes(v, copy=False)
                Lossless.from_config(enc.params).reconstruct_into(enc, b, w)
            if r:
                passes.append((pc() - t0, dict(own), dict(incl), dict(calls)))
    finally:
        for m, a, raw in saved:
            setattr(m, a, raw)
    n = len(views)
    whole = [p[0] for p in passes]
    best_own = {k: min(p[1][k] for p in passes) for k in own}
    best_incl = {k: min(p[2][k] for p in passes) for k in incl}
    ncalls = passes[0][3]
    say(f"Command: `python benchmarks/probe_decode_overhead.py {shlex.join(argv if argv is not None else sys.argv[1:])}`  ")
    say(f"Machine: {args.machine}; load average {os.getloadavg()[0]:.2f}; {n} tensors; the loop with the timers, "
        f"wall, best of {args.repeat}: {min(whole) / n * 1e6:.1f} us a tensor")
    say("")
    say("| function | calls a tensor | us a tensor, with its callees | its own us a tensor |")
    say("|---|---:|---:|---:|")
    py = 0.0
    for _, _, label in targets:
        if not ncalls[label]:
            continue
        say(f"| {label} | {ncalls[label] / n:.2f} | {best_incl[label] / n * 1e6:.1f} | {best_own[label] / n * 1e6:.1f} |")
        if not label.startswith("kernel"):
            py += best_own[label]
    kern = sum(best_own[label] for _, _, label in targets if label.startswith("kernel"))
    say("")
    say(f"Own time outside the kernels, summed: {py / n * 1e6:.1f} us a tensor; the kernels {kern / n * 1e6:.1f}; "
        f"the loop's own (the probe's calls, the wrappers' cost) the rest of {min(whole) / n * 1e6:.1f}.")
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
