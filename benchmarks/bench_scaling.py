"""How the lossless paths scale with workers: `add base`, `checkout`, and a lossless `add finetune`
of a Llama-2-7B-shaped bf16 model, end to end through a fresh store, at 1, 2, 4, ... workers;
beside zipnn 0.5.4 with the same thread counts on the same file (in memory, codec only), and
optionally beside an older deltastore installed elsewhere (``--old-site DIR``, a ``pip install
--target`` of an earlier commit) so that "today" and "now" are measured in one run.

    python benchmarks/bench_scaling.py --layers 2 --workers 1,2 --work /tmp/scale          # dev VM
    python benchmarks/bench_scaling.py --layers 8 --workers 1,2,4,8,16 --old-site /tmp/old  # 16 cores
    python benchmarks/bench_scaling.py --layers 2 --workers 2 --old-site /tmp/old --rounds 2  # shared 2 cores

``--rounds N`` measures every install N times, one after another in each round, and adds the
medians: on a machine shared with other work the load drifts, and a round hits all alike.

Synthetic weights (benchmarks/bench_store_gpu.py's shapes: --layers of Llama-2-7B's 32, full
embeddings and lm_head; base Gaussian, std 0.02). The fine-tune moves every weight by a few
units in the last place on 40% of elements, as a short real fine-tune does. Every measurement
runs in its own process (`DELTASTORE_THREADS` = workers), reads its input from the page cache
(each input is read once before timing) and reports wall-clock seconds; GB/s are of the
safetensors file (10^9 bytes). Checkouts are verified (sha256 of the file against the source).
Before an install's first timed op, a tiny model (two 8 MiB tensors) goes through each op once,
untimed: a fresh install compiles its numba kernels into its cache then (seconds each), which
every later process loads; the per-process load itself is timed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_store_gpu import layer_shapes  # noqa: E402


def make_pair(work: Path, layers: int, shards: int = 1) -> tuple[Path, Path]:
    """The base and the fine-tune, each in ``shards`` safetensors files of about equal bytes in the
    layers' order (``model.safetensors``, or ``model-0000k-of-0000n.safetensors`` as HF names them).
    ``BENCH_FAST_DATA=1``: each tensor from a generator of its own, made on every core (the one
    generator's run took ~250 s of each 10-minute device call for 32 layers); other bytes from the
    same distribution, so figures of one run compare, and ratios match the default's (1 layer on the
    dev VM: fourteenth session)."""
    from deltastore.safetensors_io import build_header

    shapes = layer_shapes(layers)
    dirs = [work / "base", work / "ft"]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": layers}))
    sizes = [2 * math.prod(s) for _, s in shapes]
    cut = [0] + [next(k for k in range(len(sizes) + 1) if sum(sizes[:k]) >= sum(sizes) * j / shards) for j in range(1, shards)]
    groups = [shapes[a:b] for a, b in zip(cut, cut[1:] + [len(shapes)])]
    g = torch.Generator().manual_seed(0)

    def pair(name: str, shape: tuple, gen: torch.Generator) -> tuple[bytes, bytes]:
        w = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        bits = w.view(torch.int16)
        step = torch.randint(-3, 4, shape, generator=gen, dtype=torch.int16)
        step[torch.rand(shape, generator=gen) > 0.4] = 0
        f = (bits + step).view(torch.bfloat16)  # a few ulps on 40% of the elements
        return w.view(torch.uint8).numpy().tobytes(), f.view(torch.uint8).numpy().tobytes()

    fast = os.environ.get("BENCH_FAST_DATA", "").strip() == "1"
    pool = ThreadPoolExecutor(os.cpu_count() or 1) if fast else None
    k = 0
    for j, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{j + 1:05d}-of-{shards:05d}.safetensors"
        head, _ = build_header([(n, "BF16", s) for n, s in group], {"format": "pt"})
        with open(dirs[0] / fname, "wb") as fb, open(dirs[1] / fname, "wb") as ff:
            fb.write(head)
            ff.write(head)
            if fast:  # each tensor from a generator of its own, on every core, a window of them at a time
                made: deque = deque()  # (other bytes than the one generator's, the same distribution)
                for name, shape in group:
                    made.append(pool.submit(pair, name, shape, torch.Generator().manual_seed(1000 + k)))
                    k += 1
                    while len(made) > (os.cpu_count() or 1) or (made and name == group[-1][0]):
                        b, f = made.popleft().result()
                        fb.write(b)
                        ff.write(f)
                        del b, f
                continue
            for name, shape in group:
                b, f = pair(name, shape, g)
                fb.write(b)
                ff.write(f)
                del b, f
    if pool is not None:
        pool.shutdown()
    return dirs[0], dirs[1]


def reuse_pair(model: Path, layers: int) -> int:
    """:func:`make_pair` under ``model`` unless an earlier run left one there (profiling and probe
    runs reuse their ``--work`` folder); the base file's size in bytes."""
    if not (model / "ft" / "model.safetensors").exists():
        shutil.rmtree(model, ignore_errors=True)
        make_pair(model, layers)
    return (model / "base" / "model.safetensors").stat().st_size


ONE = r"""
import json, sys, time, hashlib, os
import deltastore
op, home, src, out = sys.argv[1:5]
if os.environ.get("BENCH_SWITCH_INTERVAL"):  # an experiment's knob (the GIL's hand-off interval), not the store's
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))
st = deltastore.open(home)
t = time.perf_counter()
if op == "add_base":
    v = st.add_base("m", src)
elif op == "add_ft":
    v = st.add_finetune("ft", src, base="m", codec="lossless")
else:
    v = st.checkout(src, out)
dt = time.perf_counter() - t
res = {"s": dt}
if op != "checkout":
    res["stored"] = v.stored_bytes
print(json.dumps(res))
"""


#: bytes of new page cache written and deleted before each timed op (``--prime-pages``); 0: none
PRIME_BYTES = 0
#: time the adds only (``--adds-only``)
ADDS_ONLY = False


def prime_pages(folder: Path, nbytes: int) -> None:
    """Write ``nbytes`` to a new file in ``folder`` and delete it (before any writeback: no disk
    I/O), so the memory the next op's page cache and buffers take was touched just before.

    Why: on a virtual machine whose memory the host backs lazily, the first touch of a guest page
    the host does not hold costs far more than a copy. Measured on the dev VM (2 cores): pwrite of 1
    GiB to a new file from a reused 4 MiB buffer took 3.66, then 1.18, then 0.29 thread CPU-s in
    three rounds; rewriting the same (truncated) file 0.27-0.41. A checkout writes the model's bytes
    as new page cache, so without this its figure moves with that state of the machine, for the
    old code and the new alike."""
    buf = bytes(4 << 20)
    path = folder / "prime-pages.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for off in range(0, nbytes, len(buf)):
            os.pwrite(fd, buf, off)
    finally:
        os.close(fd)
        path.unlink()


#: seconds each timed op's leading ``sync`` took (pending writeback of what came before: the model
#: just written, a checkout's output), printed with the run
SYNCS: list[float] = []


def run_one(op: str, home: Path, src: str, out: str, workers: int, site: str | None, extra_env: dict | None = None) -> dict:
    if PRIME_BYTES:
        prime_pages(home.parent, PRIME_BYTES)
    t = time.perf_counter()
    os.sync()  # no writeback left from before (the model's files, a checkout's output) competes with the op
    SYNCS.append(round(time.perf_counter() - t, 2))
    env = dict(os.environ, DELTASTORE_THREADS=str(workers), **(extra_env or {}))
    if site:
        env["PYTHONPATH"] = site
    p = subprocess.run([sys.executable, "-c", ONE, op, str(home), src, out], env=env, capture_output=True, text=True,
                       cwd=str(home.parent))  # not the repository root: the installed package under test is imported
    if p.returncode != 0:
        raise SystemExit(f"{op} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def sha(path: Path) -> str:
    """SHA-256 of a file, or of a directory's safetensors files in name order (each one's in turn)."""
    h = hashlib.sha256()
    for p in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def make_tiny(work: Path) -> tuple[Path, Path]:
    """A base and a fine-tune of two 8 MiB bf16 tensors (over one plane chunk, so every kernel a
    store uses on bf16 runs), for :func:`warm_install`."""
    from deltastore.safetensors_io import build_header

    rng = np.random.default_rng(0)
    n = 4 << 20
    base = ((0.02 * rng.standard_normal(2 * n)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    ft = base + rng.integers(-2, 3, base.size).astype(np.uint16)
    head, _ = build_header([("a", "BF16", (n,)), ("b", "BF16", (n,))], {"format": "pt"})
    dirs = [work / "tiny-base", work / "tiny-ft"]
    for d, words in zip(dirs, (base, ft)):
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(head + words.tobytes())
    return dirs[0], dirs[1]


def warm_install(site: str | None, work: Path, tiny: tuple[Path, Path]) -> float:
    """An add base, add finetune and both checkouts of the tiny model with an install, untimed,
    before its first timed op: a fresh install's first use of its numba kernels compiles them into
    its cache (seconds each), which every later process loads; that load is timed, as a user's
    would be. Returns the seconds it took."""
    home = work / "warm-home"
    shutil.rmtree(home, ignore_errors=True)
    t = time.perf_counter()
    for op, src in (("add_base", str(tiny[0])), ("add_ft", str(tiny[1])), ("checkout", "m@v1"), ("checkout", "ft@v1")):
        out = work / "warm-out"
        shutil.rmtree(out, ignore_errors=True)
        run_one(op, home, src, str(out), 2, site)
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(work / "warm-out", ignore_errors=True)
    return time.perf_counter() - t


_WARMED: set[str | None] = set()


def bench_store(label: str, site: str | None, base: Path, ft: Path, workers: list[int], work: Path, nbytes: int,
                want: dict[str, str], homes: Path, inorder_at: set[int] = frozenset(), round_: int | None = None,
                env: dict | None = None) -> list[dict]:
    """Each op at each worker count in a fresh store; at the counts in ``inorder_at`` the
    checkouts run once more with ``DELTASTORE_MAP_WRITES=0`` (tensors written in order by one
    thread instead of decoded into a mapped file), as a row of their own. ``round_``: which
    round of ``--rounds`` this is (recorded in the row, with the load average when it began).
    ``env``: set for every op of this install (``--env-variant``)."""
    if site not in _WARMED:
        print(f"{label}: warmed (tiny model round trip, not timed) in {warm_install(site, work, make_tiny(work)):.1f} s", flush=True)
        _WARMED.add(site)
    rows = []
    for w in workers:
        home = homes / f"home-{label.replace(' ', '-')}-{w}"
        shutil.rmtree(home, ignore_errors=True)
        home.parent.mkdir(parents=True, exist_ok=True)
        row = {"impl": label, "store on": str(homes), "workers": w}
        if round_ is not None:
            row["round"], row["load"] = round_, round(os.getloadavg()[0], 1)
        r = run_one("add_base", home, str(base), "", w, site, env)
        row["add_base_GBps"], row["base_ratio"] = nbytes / r["s"] / 1e9, nbytes / r["stored"]
        r = run_one("add_ft", home, str(ft), "", w, site, env)
        row["add_ft_GBps"], row["ft_ratio"] = nbytes / r["s"] / 1e9, nbytes / r["stored"]
        extra = [row]
        if ADDS_ONLY:
            shutil.rmtree(home)
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        if w in inorder_at:
            extra.append({"impl": label + " (checkout written in order)", "store on": str(homes), "workers": w})
        for r_ in extra:
            op_env = dict(env or {}, **({"DELTASTORE_MAP_WRITES": "0"} if r_ is not row else {}))
            for ref, key in (("m@v1", "checkout_base_GBps"), ("ft@v1", "checkout_ft_GBps")):
                out = work / f"out-{label}-{w}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_one("checkout", home, ref, str(out), w, site, op_env)
                r_[key] = nbytes / r["s"] / 1e9
                got = sha(out)
                assert got == want[ref], f"{label} checkout of {ref} is not byte-identical"
                shutil.rmtree(out)
        shutil.rmtree(home)
        rows.extend(extra)
        for r_ in extra:
            print(json.dumps(r_), flush=True)
    return rows


def bench_zipnn(path: Path, workers: list[int], nbytes: int) -> list[dict]:
    try:
        from zipnn import ZipNN
    except ImportError:
        print("zipnn not installed (pip install zipnn==0.5.4): skipped", flush=True)
        return []
    data = path.read_bytes()
    want = hashlib.sha256(data).digest()
    rows = []
    for w in workers:
        z = ZipNN(input_format="byte", bytearray_dtype="bfloat16", threads=w)
        buf = bytearray(data)
        t = time.perf_counter()
        comp = z.compress(buf)
        tc = time.perf_counter() - t
        t = time.perf_counter()
        back = z.decompress(comp)
        td = time.perf_counter() - t
        assert hashlib.sha256(back).digest() == want
        row = {"impl": "zipnn 0.5.4 (in memory)", "workers": w, "add_base_GBps": nbytes / tc / 1e9,
               "checkout_base_GBps": nbytes / td / 1e9, "base_ratio": nbytes / len(comp)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del buf, comp, back
    return rows


def durable_write_GBps(folder: Path, nbytes: int = 1 << 30) -> float:
    """What the folder's file system takes durably: 1 GiB written in 4 MiB blocks, then fsync."""
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "probe.bin"
    block = os.urandom(4 << 20)
    t = time.perf_counter()
    with open(p, "wb") as f:
        for _ in range(nbytes // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    p.unlink()
    return nbytes / dt / 1e9


def fs_type(folder: Path) -> str:
    """The file system a folder lies on (the longest mount point above it in /proc/mounts)."""
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and str(folder.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def medians(rows: list[dict]) -> list[dict]:
    """One row per (implementation, store folder, workers): the median of each figure over the
    rounds, labelled "median of N"."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["impl"], r.get("store on"), r["workers"]), []).append(r)
    out = []
    for (impl, on, w), rs in groups.items():
        m = {"impl": f"{impl} (median of {len(rs)})", "store on": on, "workers": w}
        for k in rs[0]:
            if k.endswith("GBps") or k.endswith("ratio"):
                m[k] = float(np.median([r[k] for r in rs if k in r]))
        out.append(m)
    return out


def table(rows: list[dict]) -> str:
    cols = [("impl", "implementation"), ("store on", "store on"), ("workers", "workers"), ("round", "round"), ("load", "load"),
            ("add_base_GBps", "add base GB/s"),
            ("checkout_base_GBps", "checkout base GB/s"), ("add_ft_GBps", "add finetune (lossless) GB/s"),
            ("checkout_ft_GBps", "checkout finetune GB/s"), ("base_ratio", "base ratio"), ("ft_ratio", "finetune ratio")]
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            cells.append("-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def machine() -> str:
    """The CPU (model, cores, whether it has SHA instructions: each add hashes every byte twice)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    sha = "SHA-NI" if " sha_ni" in flags else ("no SHA-NI" if flags else "SHA-NI unknown")
    return f"{model}, {os.cpu_count()} cores ({sha}), kernel {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--shards", type=int, default=1, help="safetensors files the model is split into (as HF shards)")
    ap.add_argument("--work", default="/tmp/ds-scale")
    ap.add_argument("--model", default=None, help="make the model pair here, or reuse the one an earlier run (or "
                    "probe_ft_add_stages.py --work DIR: DIR/model) left there, instead of under --work")
    ap.add_argument("--adds-only", action="store_true", help="time the two adds only, no checkouts")
    ap.add_argument("--warmup", action="store_true",
                    help="add the model (base, then fine-tune) once, untimed, before the timed rounds: on the H200 "
                         "machine every fresh machine's first fine-tune add read lowest (1.287-1.312 GB/s, four calls of "
                         "four, fifteenth session), the later ones 1.298-1.523")
    ap.add_argument("--old-site", default=None, help="PYTHONPATH of an older deltastore to measure in the same run")
    ap.add_argument("--old-workers", default=None, help="worker counts for the older deltastore (default: --workers)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=SITE:W1,W2",
                    help="another deltastore install (pip --target SITE) to measure at the given worker counts, "
                    "e.g. one built with a proposed change; repeatable")
    ap.add_argument("--env-variant", action="append", default=[], metavar="LABEL=NAME=VALUE[,NAME=VALUE]:W1,W2",
                    help="this install again with these environment variables set for every op, at the given worker "
                    "counts (e.g. a knob's other setting, measured in the same rounds); repeatable")
    ap.add_argument("--inorder-workers", default="",
                    help="worker counts at which this checkout's checkouts also run written in order (DELTASTORE_MAP_WRITES=0)")
    ap.add_argument("--out", default=None, help="write the markdown table and JSON rows here")
    ap.add_argument("--rounds", type=int, default=1, help="measure every install this many times, round-robin "
                    "(each row gives its round and the load average as it began), then add the medians")
    ap.add_argument("--homes", default=None, help="comma-separated folders to put the stores under (default: --work); "
                    "e.g. a disk and /dev/shm, to tell disk-bound from CPU-bound")
    ap.add_argument("--prime-pages", type=float, default=0, metavar="X",
                    help="before each timed op, write and delete X times the model's bytes as a new file beside the "
                    "store (see prime_pages: a VM whose memory the host backs lazily); 0: off")
    args = ap.parse_args()
    workers = [int(x) for x in args.workers.split(",")]
    load0 = os.getloadavg()[0]
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if args.model:
        if args.shards != 1:
            raise SystemExit("--model takes the one-file model (reuse_pair): no --shards")
        reuse_pair(Path(args.model), args.layers)
        base, ft = Path(args.model) / "base", Path(args.model) / "ft"
    else:
        base, ft = make_pair(work, args.layers, args.shards)
    global ADDS_ONLY
    ADDS_ONLY = args.adds_only
    nbytes = sum(p.stat().st_size for p in base.glob("*.safetensors"))
    global PRIME_BYTES
    PRIME_BYTES = int(args.prime_pages * nbytes)
    want = {"m@v1": sha(base), "ft@v1": sha(ft)}  # also warms the page cache
    print(f"model: {nbytes / 1e9:.2f} GB ({args.layers} layers); {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = bench_zipnn(base / "model.safetensors", workers, nbytes) if args.shards == 1 else []  # first: quick, and kept if a time limit ends the run
    if args.old_site:
        old = [int(x) for x in args.old_workers.split(",")] if args.old_workers else workers
    homes = [Path(h) for h in args.homes.split(",")] if args.homes else [work]
    disks = {f"{h} ({fs_type(h)})": durable_write_GBps(h) for h in homes}
    print("durable write GB/s (1 GiB + fsync):", disks, flush=True)
    store_rows: list[dict] = []
    inorder = {int(x) for x in args.inorder_workers.split(",") if x}
    installs = []  # (label, site, workers, in-order worker counts, environment)
    if args.old_site:
        installs.append(("deltastore before", args.old_site, old, frozenset(), None))
    installs.append(("deltastore", None, workers, inorder, None))
    for v in args.variant:
        label, _, rest = v.partition("=")
        site, _, ws = rest.rpartition(":")
        installs.append((label, site, [int(x) for x in ws.split(",")], frozenset(), None))
    for v in args.env_variant:
        label, _, rest = v.partition("=")
        pairs, _, ws = rest.rpartition(":")
        env = dict(kv.split("=", 1) for kv in pairs.split(","))
        installs.append((label, None, [int(x) for x in ws.split(",")], frozenset(), env))
    if args.warmup:  # the model's two adds once, untimed, before any timed op (see --warmup)
        home = work / "warmup-home"
        shutil.rmtree(home, ignore_errors=True)
        t = time.perf_counter()
        run_one("add_base", home, str(base), "", workers[-1], None)
        run_one("add_ft", home, str(ft), "", workers[-1], None)
        shutil.rmtree(home, ignore_errors=True)
        print(f"warm-up (both adds of the model, not timed): {time.perf_counter() - t:.1f} s", flush=True)
    for r in range(args.rounds):  # each round measures every install once, so load drifts hit all alike
        rn = r + 1 if args.rounds > 1 else None
        # and each round starts at the next install: in earlier runs the install measured first in every
        # round was 5-10% apart from the next at add base with the same code (the order or the install
        # mode, not told apart), so no install keeps one place
        turn = installs[r % len(installs):] + installs[: r % len(installs)]
        for h in homes:
            for label, site, ws, io, env in turn:
                store_rows += bench_store(label, site, base, ft, ws, work, nbytes, want, h, io, round_=rn, env=env)
    rows += store_rows
    print("sync before each timed op, s (writeback pending from before):", SYNCS, flush=True)
    if args.rounds > 1:
        rows += medians(store_rows)
    md = (f"Command: `python benchmarks/bench_scaling.py --layers {args.layers} --workers {args.workers}"
          f"{' --old-site DIR' if args.old_site else ''}{' --old-workers ' + args.old_workers if args.old_site and args.old_workers else ''}{' --homes ' + args.homes if args.homes else ''}"
          f"{''.join(' --variant ' + repr(v.split('=')[0] + '=DIR:' + v.rpartition(':')[2]) for v in args.variant)}"
          f"{''.join(' --env-variant ' + repr(v) for v in args.env_variant)}"
          f"{' --inorder-workers ' + args.inorder_workers if args.inorder_workers else ''}"
          f"{' --warmup' if args.warmup else ''}"
          f"{' --shards ' + str(args.shards) if args.shards > 1 else ''}{' --adds-only' if args.adds_only else ''}"
          f"{' --rounds ' + str(args.rounds) if args.rounds > 1 else ''}{' --prime-pages ' + str(args.prime_pages) if args.prime_pages else ''}`"
          f"\n\nMachine: {machine()}, "
          f"load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"model {nbytes / 1e9:.2f} GB bf16 ({args.layers} Llama-2-7B layers + embeddings)\n\n"
          + "Durable write rate of each store folder (1 GiB in 4 MiB blocks + fsync, GB/s): "
          + ", ".join(f"{k}: {v:.2f}" for k, v in disks.items()) + "\n\n" + table(rows) + "\n")
    print(md)
    if args.out:
        Path(args.out).write_text(md + "\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
