"""Reading versions through `deltastore mount` against reading a checked-out copy from local disk.

    python benchmarks/bench_mount.py [--synth-layers L] [--out FILE]   # reads and from_pretrained
    python benchmarks/bench_mount.py --disk N    # only: disk of N delta-come fine-tunes, mounted vs checked out
    python benchmarks/bench_mount.py --ls N      # only: `ls -lR` over a mount of N versions
    python benchmarks/bench_mount.py --warm K    # only: warm reads, mount vs local disk, K rounds, and
                                                 # the requests the server got during them
    FUSE_LIBRARY_PATH=.../libfuse3.so.3.17.2 python benchmarks/bench_mount.py --warm K --passthrough DIR[:SIZE]
                                                 # the same, the mount serving by FUSE passthrough

Store: SmolLM2-135M-Instruct bf16 (deltastore.zoo.smollm2) as a lossless base; a real full
fine-tune of it (the cached `smollm2-math-series-*` step directories, else a perturbed copy) added
twice, once `--codec lossless` and once delta-come (the default lossy codec); and a synthetic model with the tensor shapes
of a 1B Llama (hidden 2048, MLP 5632, vocab 32000) but L of its 16 layers (default 2: 0.47 GB; 16 is
the whole 0.95 B model, slow here), added as a lossless base.

Rows, for each version's model.safetensors (reads are sequential passes of 16 MiB read() calls):
  mount cold            the file's and every object's kernel page cache dropped (posix_fadvise
                        DONTNEED, checked with fincore), none of the file's own units decoded:
                        fetch + decode + verify + FUSE. Rows run in order in one mount, so the
                        fine-tunes find the base's tensors decoded (a cluster mounting a base and
                        its fine-tunes), and apply their deltas to those.
  mount warm            the file read before through this mount: the kernel's page cache holds it
                        (files are immutable; the mount keeps page caching on across opens), so the
                        read never reaches the mount process. This is what "warm" means for the goal.
  mount, decoded only   the kernel's copy dropped, decoded units still in the mount's cache: what
                        FUSE and the server cost per byte (a second reader after memory pressure)
  local cold / warm     the checked-out file, page cache dropped (checked) / kept
  checkout then read    `Store.checkout` to local disk, then one read of the file
Each figure is given as MB/s (10^6 B, wall clock: moves with other work on a shared VM) and as MB
per CPU second (the reader's CPU plus the mount server's, all threads: moves much less), over all
the passes of a kind; mount warm and local warm passes are taken in turns.
Then `from_pretrained` (transformers, CPU) in a fresh process: from a fresh mount (nothing decoded,
objects' page cache dropped) against the local checkout with its page cache dropped, and from the
mount again (warm) against the local checkout again (warm); wall and CPU seconds (loader + server).
--disk N (a run of its own: each delta-come add costs ~100 CPU seconds here): base + N delta-come
fine-tunes in the store (what a mount needs; reading all N through a mount writes nothing) against
N + 1 checked-out copies.
This is a 2-core shared VM: figures move with the other work on the machine (load average shown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # (last: ./kernels must not shadow HF's kernels package)
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_store import machine, synth_1b  # noqa: E402

import deltastore  # noqa: E402
from deltastore.zoo.cache import cache_dir  # noqa: E402

MB = 1e6
BLOCK = 16 << 20
#: the series the first fine-tune rows come from when it is cached (the rows of earlier runs)
PREFERRED_SERIES = "smollm2-math-series-60x10-lr0.0002"


def resident(path: Path) -> int | None:
    """Bytes of ``path`` in the kernel page cache (util-linux ``fincore``), or None without it."""
    if shutil.which("fincore") is None:
        return None
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True, text=True)
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def drop_cache(paths: list[Path], *, check: bool = False) -> None:
    """Evict these files from the kernel page cache (only them: the machine is shared). With
    ``check``, retry until ``fincore`` finds none of their pages (DONTNEED skips pages still on
    another CPU's LRU batch, so one call is not always enough) and fail if they stay."""
    for attempt in range(20):
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        if not check:
            return
        left = sum(resident(p) or 0 for p in paths)
        if not left:
            return
        time.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"could not drop {left} bytes of {', '.join(map(str, paths))} from the page cache")


def object_files(home: Path) -> list[Path]:
    return [p for p in (home / "objects").rglob("*") if p.is_file()]


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far, all its threads."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pass:
    """One sequential read of a file: MB/s of wall clock and MB per CPU second (reader + server)."""

    mb_s: float
    mb_cpu: float


def read_pass(path: Path, server: int | None = None) -> Pass:
    """One sequential pass with 16 MiB ``readinto`` calls, timed by the wall clock and by the CPU
    seconds it cost: this process's plus the mount server's (``server``), all threads."""
    return read_passes(path, 1, server)


def read_passes(path: Path, k: int, server: int | None = None, before: Callable[[], None] | None = None) -> Pass:
    """``k`` sequential passes (``before`` runs untimed ahead of each, e.g. to drop the page cache):
    all bytes over all wall seconds and over all CPU seconds. Totals rather than per-pass figures
    because the server's CPU time comes in 10 ms clock ticks, coarse against a 0.05 s warm pass."""
    n = sec = cpu = 0.0
    view = memoryview(bytearray(BLOCK))
    for _ in range(k):
        if before is not None:
            before()
        c0, s0 = time.process_time(), proc_cpu(server)
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while True:
                got = f.readinto(view)
                if not got:
                    break
                n += got
        sec += time.perf_counter() - t0
        cpu += time.process_time() - c0 + proc_cpu(server) - s0
    return Pass(n / MB / sec, n / MB / max(cpu, 1e-3))


def read_interleaved(a: Path, b: Path, k: int, server_a: int | None = None) -> tuple[Pass, Pass]:
    """``k`` passes over each of ``a`` and ``b``, alternating which goes first, so both see the same
    moments of a shared machine (measured one after the other, the two drift apart by more than
    the difference between them)."""
    tot = {a: [0, 0.0, 0.0], b: [0, 0.0, 0.0]}
    view = memoryview(bytearray(BLOCK))
    for i in range(2 * k):
        path = (a, b)[(i + i // 2) % 2]  # a b b a a b b a ...
        server = server_a if path == a else None
        c0, s0 = time.process_time(), proc_cpu(server)
        t0 = time.perf_counter()
        n = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                got = f.readinto(view)
                if not got:
                    break
                n += got
        t = tot[path]
        t[0] += n
        t[1] += time.perf_counter() - t0
        t[2] += time.process_time() - c0 + proc_cpu(server) - s0
    return tuple(Pass(t[0] / MB / t[1], t[0] / MB / max(t[2], 1e-3)) for t in (tot[a], tot[b]))  # type: ignore[return-value]


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DELTASTORE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "deltastore.cli", *args], env=env, capture_output=True, text=True, check=True)


def mount(home: Path, mp: Path, log: Path, cache: str = "4GiB", passthrough: str | None = None) -> int:
    """A background mount logging at INFO: at unmount the server writes how many READ requests of
    which sizes it got (``requests_seen``). ``passthrough``: auto (None: the mount's default), off,
    or DIR[:SIZE] for its local copies (DELTASTORE_MOUNT_PASSTHROUGH; passthrough needs libfuse >=
    3.17, FUSE_LIBRARY_PATH here, and root). Returns the log's length before this mount, for
    :func:`passthrough_state`."""
    mp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DELTASTORE_HOME": str(home), "DELTASTORE_LOG_LEVEL": "INFO"}
    env.pop("DELTASTORE_MOUNT_PASSTHROUGH", None)
    if passthrough:
        env["DELTASTORE_MOUNT_PASSTHROUGH"] = passthrough
    start = log.stat().st_size if log.is_file() else 0
    subprocess.run([sys.executable, "-m", "deltastore.cli", "mount", str(mp), "--cache-size", cache, "--log", str(log)],
                   env=env, capture_output=True, text=True, check=True)
    return start


def passthrough_state(log: Path, start: int) -> tuple[bool, str]:
    """Whether the mount whose log begins at ``start`` serves by passthrough, and its log line on it.
    Asked once it is up: the kernel's refusal is logged at INIT, before the mount point appears."""
    with open(log, "rb") as f:
        f.seek(start)
        lines = [ln for ln in f.read().decode(errors="replace").splitlines() if "passthrough o" in ln]
    line = lines[-1].split("passthrough", 1)[1].strip() if lines else "off: not set up"
    return line.startswith("on"), "passthrough " + line


def wait_copies(log: Path, pid: int, n: int, timeout: float = 120) -> None:
    """Wait until the mount has written ``n`` passthrough copies in all."""
    deadline = time.monotonic() + timeout
    while server_requests(log, pid).get("copies", 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} passthrough copies not written in {timeout:.0f} s: {log.read_text()[-2000:]}")
        time.sleep(0.5)


def requests_seen(log: Path) -> str:
    """The last unmount's READ requests as the server logged them (count, sizes asked), or ''."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    served = [ln for ln in lines if "unmounted:" in ln]
    sizes = [ln for ln in lines if "read requests by size asked:" in ln]
    if not served or not sizes:
        return ""
    n = served[-1].split("unmounted:", 1)[1].split(";", 1)[0].strip()
    return f"{n}; by size asked: {sizes[-1].split('asked:', 1)[1].strip()}"


def page_cache_folios(path: Path) -> dict[int, int] | None:
    """Bytes of ``path`` in the kernel's page cache by folio size (bytes -> bytes held in folios of
    that size): the file mapped and touched (its pages must be cached already), each page's frame
    from /proc/self/pagemap and its head/tail flag from /proc/kpageflags. Needs root; None
    otherwise. Why: a warm read copies folio by folio, and FUSE and ext4 cache in different sizes."""
    import mmap

    import numpy as np

    try:
        kf = open("/proc/kpageflags", "rb")
        pm = open("/proc/self/pagemap", "rb")
    except OSError:
        return None
    with kf, pm, open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        n = size // mmap.PAGESIZE
        if n == 0:
            return {}
        m = mmap.mmap(fh.fileno(), n * mmap.PAGESIZE, prot=mmap.PROT_READ)
        try:
            a = np.frombuffer(m, dtype=np.uint8)
            int(a[:: mmap.PAGESIZE].sum())  # map every page (minor faults: the file is cached)
            pm.seek(a.ctypes.data // mmap.PAGESIZE * 8)
            pfn = np.frombuffer(pm.read(n * 8), dtype=np.uint64) & np.uint64((1 << 55) - 1)
            del a
        finally:
            m.close()
        if not pfn.any():
            return None  # frame numbers hidden (no CAP_SYS_ADMIN)
        flags = np.empty(n, dtype=np.uint64)
        for i, p in enumerate(pfn.tolist()):
            kf.seek(p * 8)
            flags[i] = int.from_bytes(kf.read(8), "little")
    tail = ((flags >> np.uint64(16)) & np.uint64(1)).astype(bool)  # KPF_COMPOUND_TAIL
    heads = np.flatnonzero(~tail)
    lengths = np.diff(np.append(heads, n))
    out: dict[int, int] = {}
    for ln, c in zip(*np.unique(lengths, return_counts=True)):
        out[int(ln) * mmap.PAGESIZE] = int(ln) * mmap.PAGESIZE * int(c)
    return out


def folio_summary(sizes: dict[int, int] | None) -> str:
    """``{4096: 90%, 2 MiB: 10%}`` style: the share of the cached bytes in each folio size."""
    if sizes is None:
        return "not readable (needs root)"
    total = sum(sizes.values()) or 1
    top = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{pct:.0%} in {sz // 1024:,} KiB folios" for sz, pct in ((sz, b / total) for sz, b in top))


def unmount(home: Path, mp: Path) -> None:
    cli(home, "unmount", str(mp))


def server_pid(mp: Path) -> int | None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in cmd and str(mp).encode() in cmd and b"--foreground" in cmd:
            return int(pid)
    return None


def server_rss(mp: Path) -> int | None:
    """Peak resident memory (VmHWM) of the mount's server process."""
    pid = server_pid(mp)
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def finetune_sources(n: int, base: Path, work: Path) -> list[Path]:
    """``n`` full fine-tunes of SmolLM2: the cached series' steps (complete series only: those with
    their series.json; PREFERRED_SERIES first), then perturbed copies of the base."""
    done = [d for d in cache_dir("bench").glob("smollm2-math-series-*") if (d / "series.json").is_file()]
    done.sort(key=lambda d: (d.name != PREFERRED_SERIES, d.name))
    series = [p for d in done for p in sorted(d.glob("step*")) if (p / "model.safetensors").is_file()]
    out = series[:n]
    seed = 0
    while len(out) < n:
        from deltastore.zoo.tiny import tiny_finetune

        seed += 1
        out.append(tiny_finetune(base, work / f"perturbed{seed}", seed=seed, scale=5e-3))
    return out


@dataclass
class Load:
    """One ``from_pretrained``: wall seconds and CPU seconds (the loader's plus the server's)."""

    wall: float
    cpu: float


def from_pretrained(path: Path, server: int | None = None) -> Load:
    """``AutoModelForCausalLM.from_pretrained(path)`` in a fresh process, import time excluded."""
    code = ("import sys, time, torch\nfrom transformers import AutoModelForCausalLM\n"
            "t0, c0 = time.perf_counter(), time.process_time()\n"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
            "print(time.perf_counter() - t0, time.process_time() - c0)\n")
    s0 = proc_cpu(server)
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    wall, cpu = map(float, r.stdout.split()[-2:])
    return Load(wall, cpu + proc_cpu(server) - s0)


def ls_bench(n: int, slug: str, desc: str) -> str:
    """``ls -lR`` of a mount holding one model with ``n`` versions (a tiny Llama added ``n`` times
    with a different config.json each time, so every version has a manifest of its own)."""

    from deltastore.zoo.tiny import tiny_llama_dir

    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-mount-ls-"))
    home, mp = work / "home", work / "mnt"
    try:
        d = tiny_llama_dir(work / "m", hidden=32, layers=1)
        t0 = time.perf_counter()
        with deltastore.open(home) as st:
            for i in range(n):
                (d / "config.json").write_text(json.dumps({"version": i}))
                st.add_base("m", d, tags=[f"t{i}"] if i % 50 == 0 else [])
        print(f"{n} versions added in {time.perf_counter() - t0:.0f} s", flush=True)
        mount(home, mp, work / "mount.log")
        try:
            times, entries = [], 0
            for _ in range(2):
                t0 = time.perf_counter()
                r = subprocess.run(["ls", "-lR", str(mp)], capture_output=True, text=True, check=True)
                times.append(time.perf_counter() - t0)
                entries = sum(1 for ln in r.stdout.splitlines() if ln[:1] in "-dl" and not ln.startswith("total"))
                time.sleep(1.5)  # past the attribute timeout: the second pass asks the mount again
        finally:
            unmount(home, mp)
        load1 = os.getloadavg()[0]
        return "\n".join([
            f"# deltastore mount: `ls -lR` over {n} versions ({dt.date.today().isoformat()})", "",
            f"Command: `python benchmarks/bench_mount.py --ls {n}`  ",
            f"Machine: dev VM: {desc}, shared (load average {load0:.1f} at start, {load1:.1f} at end)", "",
            f"One model, {n} versions (each its own manifest; a tag every 50 versions), {entries} entries listed.",
            f"`ls -lR MOUNTPOINT`: first pass {times[0]:.2f} s (every manifest read once), second pass "
            f"{times[1]:.2f} s (after the 1 s attribute timeout). Sizes and headers come from the manifests: "
            "nothing is decoded.", ""])
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        shutil.rmtree(work, ignore_errors=True)


def server_requests(log: Path, pid: int) -> dict[str, float]:
    """The requests the mount server has answered so far, by operation, with "MB read" (what its
    READs returned) and, with passthrough, "copies": SIGUSR1 makes it log a "requests so far"
    line (``DeltaStoreFS.stats_line``), read back here with ``mount.parse_stats``."""
    from deltastore.mount import parse_stats

    seen = log.read_text(errors="replace").count("requests so far:")
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while (text := log.read_text(errors="replace")).count("requests so far:") <= seen:
        if time.monotonic() > deadline:
            raise RuntimeError("the mount server logged no request counts within 10 s of SIGUSR1")
        time.sleep(0.05)
    return parse_stats(text)


def dd_pass(path: Path, server: int | None = None) -> tuple[int, float, float]:
    """``dd if=path of=/dev/null bs=1M``: (bytes, wall seconds, CPU seconds of dd plus the server)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = proc_cpu(server)
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime + proc_cpu(server) - s0
    return path.stat().st_size, wall, cpu


def warm_bench(k: int, desc: str, passthrough: str | None = None) -> str:
    """Warm reads of SmolLM2's model.safetensors through the mount against its checkout on local
    disk, ``k`` rounds each of 16 MiB ``readinto`` passes and of ``dd bs=1M``, mount and local in
    turns (a b b a ...), with the requests the server answered during them (SIGUSR1 counters)
    and the page cache's folio sizes. Local warm is read from disk once first (as a checkout that
    was read before is cached), mount warm was read once through the mount. With ``passthrough``
    (DIR[:SIZE]) the mount keeps local copies of the files read and serves later opens by FUSE
    passthrough; the passes start once the file's copy is written."""
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-mount-warm-"))
    home, mp, mlog = work / "home", work / "mnt", work / "mount.log"
    try:
        from deltastore.zoo.smollm2 import smollm2_dir

        with deltastore.open(home) as st:
            st.add_base("smollm2", smollm2_dir())
            st.checkout("smollm2", work / "co")
        local = work / "co" / "model.safetensors"
        at = mount(home, mp, mlog, passthrough=passthrough)
        loads = []
        try:
            pid = server_pid(mp)
            pt_on, pt_line = passthrough_state(mlog, at)
            f = mp / "smollm2" / "v1" / "model.safetensors"
            read_pass(f, pid)
            if pt_on:
                wait_copies(mlog, pid, 1)
                read_pass(f, pid)  # the copy's first read (from disk: its written pages were dropped)
            drop_cache([local], check=True)
            read_pass(local)
            before = server_requests(mlog, pid)
            server0 = proc_cpu(pid)
            py = {f: [0, 0.0, 0.0], local: [0, 0.0, 0.0]}
            dd = {f: [0, 0.0, 0.0], local: [0, 0.0, 0.0]}
            for i in range(2 * k):
                a, b = (f, local) if i % 2 == 0 else (local, f)
                for path in (a, b):
                    p = read_pass(path, pid if path == f else None)
                    size = path.stat().st_size
                    py[path][0] += size
                    py[path][1] += size / MB / p.mb_s
                    py[path][2] += size / MB / p.mb_cpu
                for path in (b, a):
                    n, wall, cpu = dd_pass(path, pid if path == f else None)
                    dd[path][0] += n
                    dd[path][1] += wall
                    dd[path][2] += cpu
                loads.append(os.getloadavg()[0])
            server_cpu = proc_cpu(pid) - server0
            after = server_requests(mlog, pid)
            folios = (folio_summary(page_cache_folios(f)), folio_summary(page_cache_folios(local)))
        finally:
            unmount(home, mp)
        during = {op: after.get(op, 0) - before.get(op, 0) for op in sorted(set(after) | set(before))}
        during = {op: (f"{n:.1f}" if op == "MB read" else int(n)) for op, n in during.items() if n and op != "copies"}
        load1 = os.getloadavg()[0]
        size = local.stat().st_size
        passes = 2 * k
        rows = []
        for how, tot in (("python, 16 MiB readinto", py), ("dd bs=1M", dd)):
            m, loc = tot[f], tot[local]
            rows.append(f"| {how} | {m[0] / MB / m[1]:,.0f} | {loc[0] / MB / loc[1]:,.0f} | "
                        f"{(m[0] / m[1]) / (loc[0] / loc[1]):.0%} | {m[0] / MB / m[2]:,.0f} | {loc[0] / MB / loc[2]:,.0f} | "
                        f"**{(m[0] / m[2]) / (loc[0] / loc[2]):.0%}** |")
        today = dt.date.today().isoformat()
        return "\n".join([
            f"# deltastore mount: warm reads{', passthrough' if pt_on else ''}, mount vs local disk ({today})", "",
            f"Command: `{'FUSE_LIBRARY_PATH=' + os.environ['FUSE_LIBRARY_PATH'] + ' ' if os.environ.get('FUSE_LIBRARY_PATH') else ''}"
            f"python benchmarks/bench_mount.py --warm {k}{' --passthrough ' + passthrough if passthrough else ''}` "
            f"({(time.perf_counter() - t_start) / 60:.0f} min)  ",
            f"Machine: dev VM: {desc}, shared (load average {load0:.1f} at start, {load1:.1f} at end; "
            f"{min(loads):.1f}-{max(loads):.1f} over the rounds); kernel {os.uname().release}; local disk is the VM's virtio disk (ext4)  ",
            f"File: SmolLM2-135M-Instruct bf16 model.safetensors, {size / MB:,.1f} MB, lossless base; {passes} passes of each "
            "kind through the mount and as many of the checkout, in turns"
            + ("; **mount with FUSE passthrough** to its local copy of the file (written after the first read)" if pt_on else "")
            + f"; the mount's log: \"{pt_line}\"",
            "",
            "| warm read with | mount MB/s | local MB/s | wall: mount / local | mount MB per CPU s | local MB per CPU s "
            "| **per CPU s: mount / local** |", "|---|---:|---:|---:|---:|---:|---:|", *rows, "",
            "CPU seconds are the reader's (this process, or dd) plus the mount server's, all threads. "
            f"Requests the mount server answered during all {2 * passes} warm passes through the mount "
            f"(its SIGUSR1 counters, before and after): {', '.join(f'{op} {n}' for op, n in during.items()) or 'none'}; "
            f"the server's CPU over all the rounds: {server_cpu:.2f} s.  ",
            f"Page cache of the file after the passes: through the mount {folios[0]}; the checkout {folios[1]}.", ""])
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        shutil.rmtree(work, ignore_errors=True)


def prepend(out: Path, text: str) -> None:
    """Write ``text`` on top of ``out``, the earlier runs kept below it with their titles as
    "## Earlier run: ..." and their headings one level down."""
    old = out.read_text() if out.is_file() else ""
    if old.startswith("# "):
        first, _, rest = old.partition("\n")
        old = "\n## Earlier run: " + first[2:] + "\n" + rest.replace("\n# ", "\n## ")
    out.write_text(text + old)


def disk_bench(n: int, desc: str) -> str:
    """Disk of a base and ``n`` delta-come fine-tunes: the store (all a mount needs), checked while
    every fine-tune's model.safetensors is read through one mount, against ``n`` + 1 checkouts."""
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-mount-disk-"))
    home, mp, mlog = work / "home", work / "mnt", work / "mount.log"
    try:
        from deltastore.zoo.smollm2 import smollm2_dir

        base = smollm2_dir()
        fts = finetune_sources(n, base, work)
        names = ["smollm2", *(f"ft{i + 1}" for i in range(n))]
        t0 = time.perf_counter()
        with deltastore.open(home) as st:
            st.add_base("smollm2", base)
            for name, d in zip(names[1:], fts):
                st.add_finetune(name, d, "smollm2")  # delta-come, the default lossy codec
                print(f"{name} added ({time.perf_counter() - t0:.0f} s)", flush=True)
            stored = {r: st.resolve(r).stored_bytes for r in names}
            codecs = {st.resolve(r).codec for r in names[1:]}
        objects_before, home_before = du(home / "objects"), du(home)
        mount(home, mp, mlog, cache="1GiB")
        try:
            t0 = time.perf_counter()
            for r in names[1:]:
                read_pass(mp / r / "v1" / "model.safetensors")
            read_all = time.perf_counter() - t0
            rss = server_rss(mp)
        finally:
            unmount(home, mp)
        home_after = du(home)
        with deltastore.open(home) as st:
            for r in names:
                st.checkout(r, work / "co" / r)
        co = {r: du(work / "co" / r) for r in names}
        for r in names:  # the checkouts' bytes are the files': none are sparse or shared
            assert co[r] >= sum(p.stat().st_size for p in (work / "co" / r).iterdir()), r
        load1 = os.getloadavg()[0]
        deltas = sum(stored[r] for r in names[1:])
        mounted = stored["smollm2"] + deltas
        checked_out = sum(co.values())
        today = dt.date.today().isoformat()
        return "\n".join([
            f"# deltastore mount: disk of {n} delta-come fine-tunes, mounted vs checked out ({today})", "",
            f"Command: `python benchmarks/bench_mount.py --disk {n}` ({(time.perf_counter() - t_start) / 60:.0f} min)  ",
            f"Machine: dev VM: {desc}, shared (load average {load0:.1f} at start, {load1:.1f} at end)", "",
            "| | MB |", "|---|---:|",
            f"| base (SmolLM2-135M-Instruct bf16, lossless), stored | {stored['smollm2'] / MB:,.1f} |",
            f"| {n} delta-come fine-tunes, stored (each: {', '.join(f'{stored[r] / MB:.1f}' for r in names[1:])}) "
            f"| {deltas / MB:,.1f} |",
            f"| **mounted: base + {n} deltas** (what the mount reads; goal: at most this) | **{mounted / MB:,.1f}** |",
            f"| the store's objects folder, `du -sb` | {objects_before / MB:,.1f} |",
            f"| whole store (objects, catalog, manifests), `du -sb` | {home_before / MB:,.1f} |",
            f"| **checked out: base + {n} fine-tunes**, `du -sb` of each checkout | **{checked_out / MB:,.1f}** |",
            f"| checked out / mounted | {checked_out / mounted:.1f}x |", "",
            f"Mounted, every fine-tune's model.safetensors was read through one mount (--cache-size 1GiB; {read_all:.0f} s "
            f"for all {n}, server peak RSS {(rss or 0) / 2**20:,.0f} MiB): the store's disk use changed by "
            f"{home_after - home_before:+,} bytes, since decoded bytes live in the mount's memory cache and the "
            f"kernel's page cache, never on disk. Codec of the fine-tunes: {', '.join(sorted(codecs))}.",
            f"Fine-tune sources: {', '.join(p.name if p.name.startswith('perturbed') else p.parent.name + '/' + p.name for p in fts)}"
            + (" (perturbed*: `zoo.tiny.tiny_finetune(base, scale=5e-3)`, every weight matrix moved by Gaussian noise)"
               if any(p.name.startswith("perturbed") for p in fts) else "") + ".", ""])
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--disk", type=int, default=0, metavar="N",
                    help="only the disk of N delta-come fine-tunes mounted vs checked out (results: mount_disk_<machine>.md)")
    ap.add_argument("--synth-layers", type=int, default=2, metavar="L",
                    help="layers of the synthetic 1B-shaped model (default 2; 16 is the whole model; 0: no such row)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--warm", type=int, default=0, metavar="K",
                    help="only warm reads, mount vs local disk, K rounds (a section on top of mount_<machine>.md)")
    ap.add_argument("--passthrough", default=None, metavar="auto|off|DIR[:SIZE]",
                    help="the mount's passthrough setting (default: the mount's own, auto: on where libfuse >= 3.17, "
                         "FUSE_LIBRARY_PATH here, and root allow it; files it has read are then served from local copies)")
    ap.add_argument("--ls", type=int, default=0, metavar="N",
                    help="only time `ls -lR` over a mount of N versions (results: mount_ls_<machine>.md)")
    args = ap.parse_args(argv)
    desc, slug = machine()
    if args.ls:
        text = ls_bench(args.ls, slug, desc)
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mount_ls_{slug}.md"
        out.write_text(text)
        print(text)
        return 0
    if args.warm:
        text = warm_bench(args.warm, desc, args.passthrough) + "\n"
        prepend(Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mount_{slug}.md", text)
        print(text)
        return 0
    if args.disk:
        text = disk_bench(args.disk, desc)
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mount_disk_{slug}.md"
        out.write_text(text)
        print(text)
        return 0
    load0 = os.getloadavg()[0]
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-mount-"))
    home, mp, mlog = work / "home", work / "mnt", work / "mount.log"
    try:
        from deltastore.zoo.smollm2 import smollm2_dir

        base = smollm2_dir()
        fts = finetune_sources(1, base, work)
        synth = synth_1b(args.synth_layers) if args.synth_layers else None
        t0 = time.perf_counter()
        with deltastore.open(home) as st:
            st.add_base("smollm2", base)
            st.add_finetune("ft-lossless", fts[0], "smollm2", codec="lossless")
            st.add_finetune("ft1", fts[0], "smollm2")  # delta-come
            if synth:
                st.add_base("synth", synth)
        print(f"store built in {time.perf_counter() - t0:.0f} s", flush=True)
        versions = [("SmolLM2-135M base, lossless", "smollm2"), ("SmolLM2 fine-tune, lossless", "ft-lossless"),
                    ("SmolLM2 fine-tune, delta-come", "ft1")]
        if synth:
            versions.append((f"synthetic 1B-shaped ({args.synth_layers} of 16 layers), lossless", "synth"))
        objs = object_files(home)

        # -- sequential reads -------------------------------------------------------------------
        rows, folio_rows = [], []
        at = mount(home, mp, mlog, passthrough=args.passthrough)
        try:
            pid = server_pid(mp)
            pt_on, pt_line = passthrough_state(mlog, at)
            for i, (label, name) in enumerate(versions):
                f = mp / name / "v1" / "model.safetensors"
                co = work / "co" / name
                t0 = time.perf_counter()
                with deltastore.open(home) as st:
                    st.checkout(name, co)
                co_sec = time.perf_counter() - t0
                local = co / "model.safetensors"
                size = local.stat().st_size
                drop_cache(objs)
                drop_cache([f], check=True)
                cold = read_pass(f, pid)  # the page cache holds the file from here on
                if pt_on:  # later opens are served from the local copy written after that read
                    wait_copies(mlog, pid, i + 1)
                    read_pass(f, pid)  # the copy's first read (its written pages were dropped)
                read_pass(local)
                warm, local_warm = read_interleaved(f, local, 6, pid)
                folios = (folio_summary(page_cache_folios(f)), folio_summary(page_cache_folios(local)))
                # with passthrough no read reaches the server again, so there is no such row
                decoded = None if pt_on else read_passes(f, 3, pid, before=lambda f=f: drop_cache([f], check=True))
                local_cold = read_passes(local, 2, before=lambda local=local: drop_cache([local], check=True))
                t0 = time.perf_counter()
                read_pass(local)
                co_read = size / MB / (co_sec + time.perf_counter() - t0)
                rows.append((label, size, cold, warm, decoded, local_cold, local_warm, co_read))
                folio_rows.append((label, *folios))
                print(label, rows[-1][1:], folios, flush=True)
            rss = server_rss(mp)
        finally:
            unmount(home, mp)
        time.sleep(0.5)
        seq_requests = requests_seen(mlog)

        # -- from_pretrained: a fresh mount per model (nothing decoded) against the local checkout --
        fp, fp_requests = [], []
        for label, name in versions[1:3]:
            drop_cache(objs)
            mount(home, mp, mlog, passthrough=args.passthrough)
            try:
                pid = server_pid(mp)
                fresh = from_pretrained(mp / name / "v1", pid)
                warm = from_pretrained(mp / name / "v1", pid)
            finally:
                unmount(home, mp)
            time.sleep(0.5)
            fp_requests.append((label, requests_seen(mlog)))
            co = work / "co" / name
            drop_cache(list(co.iterdir()), check=True)
            local_cold = from_pretrained(co)
            local_warm = from_pretrained(co)
            fp.append((label, fresh, local_cold, warm, local_warm))
            print(label, fp[-1][1:], flush=True)

        load1 = os.getloadavg()[0]
        minutes = (time.perf_counter() - t_start) / 60

        # -- the report ---------------------------------------------------------------------------
        today = dt.date.today().isoformat()
        cmd = ("FUSE_LIBRARY_PATH=" + os.environ["FUSE_LIBRARY_PATH"] + " " if os.environ.get("FUSE_LIBRARY_PATH") else "") \
            + "python benchmarks/bench_mount.py" + (f" --synth-layers {args.synth_layers}" if args.synth_layers != 2 else "") \
            + (f" --passthrough {args.passthrough}" if args.passthrough else "")
        lines = [f"# deltastore mount: reading versions as files vs a local checkout ({today})", "",
                 f"Command: `{cmd}` ({minutes:.0f} min)  ",
                 f"Machine: dev VM: {desc}, shared (load average {load0:.1f} at start, {load1:.1f} at end); "
                 "local disk is the VM's virtio disk  ",
                 f"FUSE: libfuse3 via mfusepy, 1 MiB requests; mount with --cache-size 4GiB, read_ahead_kb 16384, "
                 f"{'**passthrough on** (warm reads from local copies of the files read)' if pt_on else 'passthrough off'} "
                 f"(its log: \"{pt_line}\"); kernel {os.uname().release}; "
                 f"server peak RSS {(rss or 0) / 2**20:,.0f} MiB (torch imported)", "",
                 "MB per CPU second (file bytes over the CPU seconds of the pass: the reader's plus the mount "
                 "server's, all threads; steady under other load):", "",
                 "| model.safetensors of | MB | mount cold | **mount warm** | mount, decoded only | local cold "
                 "| **local warm** | warm: mount / local |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, size, cold, warm, dec, lc, lw, _cr in rows:
            lines.append(f"| {label} | {size / MB:,.1f} | {cold.mb_cpu:,.0f} | {warm.mb_cpu:,.0f} | {f'{dec.mb_cpu:,.0f}' if dec else '-'} "
                         f"| {lc.mb_cpu:,.0f} | {lw.mb_cpu:,.0f} | {warm.mb_cpu / lw.mb_cpu:.0%} |")
        lines += ["", "MB/s (wall clock; moves with the other work on this shared VM):", "",
                  "| model.safetensors of | mount cold | **mount warm** | mount, decoded only | local cold "
                  "| **local warm** | checkout then read | warm: mount / local |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, size, cold, warm, dec, lc, lw, cr in rows:
            lines.append(f"| {label} | {cold.mb_s:,.0f} | {warm.mb_s:,.0f} | {f'{dec.mb_s:,.0f}' if dec else '-'} | {lc.mb_s:,.0f} "
                         f"| {lw.mb_s:,.0f} | {cr:,.0f} | {warm.mb_s / lw.mb_s:.0%} |")
        lines += ["", "Sequential passes with 16 MiB reads: cold 1, decoded only 3, local cold 2, and 6 each of mount warm "
                  "and local warm taken in turns (a b b a ...) so both see the same moments of the shared machine; "
                  "each figure is all their bytes over all their seconds. **Warm** (the goal's figure): the file was read before through this mount, so the kernel's "
                  "page cache serves it and the read never reaches the mount process; likewise local warm. Mount cold: "
                  "nothing of the file decoded, its and all objects' page cache dropped; rows run in order in one mount, "
                  "so the fine-tunes find the base's tensors decoded by the first row. Decoded only: the kernel's copy "
                  "dropped, every unit decoded in the mount's cache; each 1 MiB FUSE request costs a copy out of Python "
                  "into libfuse and the kernel's copy into the page cache. Local cold: the checked-out file's page cache "
                  "dropped (checked with fincore). Checkout then read: `checkout` of the version plus one read of the file."
                  + (" Passthrough on: after the cold pass the mount writes a local copy of the file and the warm passes "
                     "are served from the copy's page cache by the kernel (one read of the copy first, from disk); no "
                     "read reaches the server, so there is no decoded-only row (-)." if pt_on else ""),
                  "", "Page cache of each file after the warm passes (folio sizes from /proc/kpageflags: a warm read "
                  "copies folio by folio):", "", "| model.safetensors of | through the mount | checked out (local disk) |",
                  "|---|---|---|", *[f"| {label} | {m} | {loc} |" for label, m, loc in folio_rows], "",
                  f"READ requests the mount server got over these passes (cold, decoded only): {seq_requests or 'not logged'}.",
                  "", "| from_pretrained of | mount fresh | local cold | fresh / local cold | mount warm | local warm "
                  "| warm / local warm |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for label, fr, lc, wm, lw in fp:
            lines.append(f"| {label}, wall s | {fr.wall:.2f} | {lc.wall:.2f} | {fr.wall / lc.wall:.2f}x | {wm.wall:.2f} "
                         f"| {lw.wall:.2f} | {wm.wall / lw.wall:.2f}x |")
            lines.append(f"| {label}, CPU s | {fr.cpu:.2f} | {lc.cpu:.2f} | {fr.cpu / lc.cpu:.2f}x | {wm.cpu:.2f} "
                         f"| {lw.cpu:.2f} | {wm.cpu / lw.cpu:.2f}x |")
        lines += ["", "`AutoModelForCausalLM.from_pretrained(DIR)` in a fresh Python process, CPU, import time excluded. "
                  "Mount fresh: a new mount process for each model (nothing decoded), the objects' page cache dropped; "
                  "the mount starts decoding a version's weights when its config.json is opened, the loader's first read; "
                  "its CPU seconds are the loader's plus the mount server's (the decode). Local cold: the checkout's "
                  "page cache dropped. Warm: the same again at once.",
                  *[f"READ requests of the {label} mount (fresh then warm from_pretrained): {r or 'not logged'}."
                    for label, r in fp_requests],
                  f"Fine-tune source: {fts[0].parent.name}/{fts[0].name}. Disk for 10 fine-tunes: mount_disk_{slug}.md."]
        text = "\n".join(lines) + "\n"
        prepend(Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mount_{slug}.md", text)
        print(text)
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
