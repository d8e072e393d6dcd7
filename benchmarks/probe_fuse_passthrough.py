"""What a warm read through FUSE costs on this kernel, and what FUSE passthrough would change.

    python benchmarks/probe_fuse_passthrough.py [--rounds K] [--libfuse317 PATH/libfuse3.so.3.17.x]

A bare read-only FUSE file system (mfusepy, nothing of deltastore) shows one file whose bytes are
those of a local file (a copy of SmolLM2's model.safetensors on the local disk). Warm reads of it
are timed against the local file itself, in turns (a b b a ...), in these set-ups:

  page cache, 128 KiB   the server answers READ from memory; the kernel caches the file (kernel_cache)
                        with libfuse's defaults (max_read unset, read_ahead_kb 128)
  page cache, 1 MiB     the same with max_read 1 MiB and read_ahead_kb 16384 (what deltastore's mount
                        asks for): does any of it change the page cache's folio size?
                        (``cache-1m-ra128``: max_read 1 MiB with the bdi's read_ahead_kb left at 128,
                        to tell the read-ahead setting's share from max_read's)
  direct_io, 1 MiB      ``--modes ...,direct-1m``: OPEN answers FOPEN_DIRECT_IO (no page cache), max_read
                        1 MiB: every read is served by the server, a copy per request in user space
                        (what serving the mount's decoded-chunk cache without the page cache costs)
  passthrough           libfuse >= 3.17 only (``--libfuse317``): OPEN answers with a backing id
                        (FUSE_DEV_IOC_BACKING_OPEN on /dev/fuse, then FOPEN_PASSTHROUGH), so the
                        kernel reads the local file's own page cache; the server gets no READ

Each row times python 16 MiB ``readinto`` passes and ``dd bs=1M`` passes, mount and local in
turns. For the page-cache rows, the file's pages are then dropped and faulted back in through an
mmap with MADV_HUGEPAGE (the one request for large folios a reader can make), and the folio sizes
are read again; the mount's backing_dev_info settings (read_ahead_kb, max_ratio, strict_limit) are
noted. benchmarks/results/mount_folios_research.md says which kernel source decides the folio size.

Why: deltastore's warm reads are the kernel's copy out of FUSE's page cache, which this kernel
fills with 4 KiB folios whatever the server asks (checked here with /proc/kpageflags), against
ext4's 2 MiB folios for the same bytes. Passthrough is the one way left to a server to make warm
reads cost what local ones do. What it takes, found while writing this: libfuse >= 3.17 (Debian 12
ships 3.14; Debian 13's 3.17 needs glibc 2.38, so it was built from the fuse-3.17.2 tag with meson,
library only); CAP_SYS_ADMIN for the backing-id ioctl; the open reply without FOPEN_KEEP_CACHE
(outside the kernel's FOPEN_PASSTHROUGH_MASK: the open fails with EIO); mfusepy 3.1 names no
``backing_id`` field, so it is written at its offset in ``struct fuse_file_info`` (36) with
``raw_fi`` (deltastore.passthrough, which the mount's own passthrough uses too). Results: benchmarks/results/mount_passthrough_<machine>.md, on top of earlier runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import mmap
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

MB = 1e6


def serve(mode: str, mountpoint: str, backing: str, counts_file: str) -> None:
    """The bare file system, in the foreground: ``/f`` has ``backing``'s bytes."""
    import mfusepy

    from deltastore.passthrough import FUSE_CAP_PASSTHROUGH, Backing, set_backing_id

    size = os.path.getsize(backing)
    counts: dict[str, int] = {}
    src = open(backing, "rb")
    data = mmap.mmap(src.fileno(), size, prot=mmap.PROT_READ)
    passthrough = mode == "passthrough"
    ids = Backing()

    class FS(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def init_with_config(self, conn, config) -> None:  # noqa: ANN001
            if passthrough:
                conn.want_ext |= FUSE_CAP_PASSTHROUGH
                conn.max_backing_stack_depth = 1
            if mode in ("cache-1m", "cache-1m-ra128", "direct-1m"):
                conn.max_read = 1 << 20

        def getattr(self, path: str, fh=None) -> dict:  # noqa: ANN001
            counts["getattr"] = counts.get("getattr", 0) + 1
            if path == "/":
                return {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path == "/f":
                return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": size, "st_mtime": 10**18}
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh) -> list[str]:  # noqa: ANN001
            return [".", "..", "f"]

        def open(self, path: str, fi) -> int:  # noqa: ANN001
            counts["open"] = counts.get("open", 0) + 1
            if passthrough:  # one backing id per open: they are opened one at a time here
                fi.fh = ids.open(Path(backing))
                set_backing_id(fi, fi.fh)
            elif mode == "direct-1m":
                fi.direct_io = 1  # FOPEN_DIRECT_IO: every read comes here
            else:
                fi.keep_cache = 1
            return 0

        def read(self, path: str, size_: int, offset: int, fi) -> bytes:  # noqa: ANN001
            counts["read"] = counts.get("read", 0) + 1
            return data[offset : offset + size_]

        def release(self, path: str, fi) -> int:  # noqa: ANN001
            counts["release"] = counts.get("release", 0) + 1
            if passthrough:
                ids.close(fi.fh)
            return 0

        def destroy(self, path: str) -> None:
            Path(counts_file).write_text(json.dumps(counts))

    opts = dict(foreground=True, ro=True, raw_fi=True)
    if mode in ("cache-1m", "cache-1m-ra128", "direct-1m"):
        opts["max_read"] = 1 << 20
    if mode.startswith("cache-"):
        opts["kernel_cache"] = True
    mfusepy.FUSE(FS(), mountpoint, **opts)


def start(mode: str, mp: Path, backing: Path, counts: Path, libfuse: str | None) -> subprocess.Popen:
    env = dict(os.environ)
    if libfuse:
        env["FUSE_LIBRARY_PATH"] = libfuse
    log = open(mp.parent / f"{mode}.log", "wb")
    p = subprocess.Popen([sys.executable, __file__, "--serve", mode, str(mp), str(backing), str(counts)],
                         env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mp):
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise RuntimeError(f"{mode} mount did not come up: {(mp.parent / f'{mode}.log').read_text()[-1000:]}")
        time.sleep(0.05)
    if mode in ("cache-1m", "direct-1m"):
        Path(bdi_dir(mp), "read_ahead_kb").write_text("16384")
    return p


def bdi_dir(mp: Path) -> str:
    dev = os.stat(mp).st_dev
    return f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}"


def bdi_settings(mp: Path) -> str:
    """The mount's backing_dev_info knobs (read_ahead_kb for reads; the ratios and strict_limit
    only throttle dirty pages, which a read-only mount never has)."""
    out = []
    for k in ("read_ahead_kb", "max_ratio", "min_ratio", "strict_limit", "max_bytes"):
        try:
            out.append(f"{k} {Path(bdi_dir(mp), k).read_text().strip()}")
        except OSError:
            pass
    return ", ".join(out)


def mmap_outcome(path: Path) -> str:
    """Whether a read-only MAP_SHARED mapping of ``path`` works (a direct_io file needs
    FUSE_DIRECT_IO_ALLOW_MMAP, FUSE protocol 7.39, for one)."""
    try:
        with open(path, "rb") as fh:
            m = mmap.mmap(fh.fileno(), 4096, prot=mmap.PROT_READ)
            _ = m[0]  # the fault that fails where mmap itself did not
            m.close()
        return "works"
    except OSError as e:
        return f"fails ({e})"


def hugepage_fault_folios(path: Path, drop) -> dict[int, int] | None:  # noqa: ANN001
    """Drop ``path``'s pages, fault them back in through a MAP_SHARED mmap advised MADV_HUGEPAGE
    (its fault path asks the page cache for PMD-sized folios where the mapping allows them), and
    read the folio sizes (``page_cache_folios``)."""
    from bench_mount import page_cache_folios

    drop([path], check=True)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        m = mmap.mmap(fh.fileno(), size, prot=mmap.PROT_READ)
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
            view = memoryview(m)
            step = mmap.PAGESIZE
            sum(view[i] for i in range(0, size, step))  # one fault per page not yet mapped
            view.release()
        finally:
            m.close()
    return page_cache_folios(path)


def libfuse_version(path: str | None) -> str:
    code = "import mfusepy; print(f'{mfusepy.fuse_version_major}.{mfusepy.fuse_version_minor}')"
    env = {**os.environ, **({"FUSE_LIBRARY_PATH": path} if path else {})}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return r.stdout.strip() or f"not loadable: {r.stderr.strip().splitlines()[-1:]}"


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(*sys.argv[2:6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="rounds of (mount, local) warm pass pairs per set-up")
    ap.add_argument("--libfuse317", default=None, help="path of a libfuse3.so of version 3.17 or later (passthrough)")
    ap.add_argument("--modes", default="cache-128k,cache-1m",
                    help="comma-separated set-ups: cache-128k, cache-1m, cache-1m-ra128, direct-1m "
                         "(passthrough is added with --libfuse317)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from bench_mount import dd_pass, drop_cache, folio_summary, page_cache_folios, prepend, proc_cpu, read_pass
    from bench_store import machine

    from deltastore.zoo.smollm2 import smollm2_dir

    desc, slug = machine()
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="probe-passthrough-"))
    modes = [m for m in args.modes.split(",") if m] + (["passthrough"] if args.libfuse317 else [])
    labels = {"cache-128k": "page cache, 128 KiB requests (libfuse defaults)",
              "cache-1m": "page cache, max_read 1 MiB, read_ahead_kb 16384",
              "cache-1m-ra128": "page cache, max_read 1 MiB, read_ahead_kb 128 (the bdi's default)",
              "direct-1m": "direct_io (no page cache), max_read 1 MiB",
              "passthrough": "passthrough to the local file (libfuse 3.17)"}
    unknown = set(modes) - set(labels)
    if unknown:
        ap.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    rows, notes, loads = [], [], []
    try:
        local = work / "model.safetensors"
        shutil.copyfile(smollm2_dir() / "model.safetensors", local)
        size = local.stat().st_size
        for mode in modes:
            mp = work / f"mnt-{mode}"
            mp.mkdir()
            counts = work / f"{mode}.counts.json"
            p = start(mode, mp, local, counts, args.libfuse317 if mode == "passthrough" else None)
            try:
                f = mp / "f"
                drop_cache([local], check=True)
                read_pass(local)  # local: cached from disk, as a checkout read before
                read_pass(f, p.pid)  # mount: cached through FUSE (passthrough: the local file's cache)
                if mode != "passthrough":
                    assert f.read_bytes() == local.read_bytes()
                tot = {f: [0.0, 0.0, 0.0], local: [0.0, 0.0, 0.0]}
                dd = {f: [0.0, 0.0, 0.0], local: [0.0, 0.0, 0.0]}
                for i in range(2 * args.rounds):
                    for path in ((f, local) if i % 2 == 0 else (local, f)):
                        s0, c0, t0 = proc_cpu(p.pid) if path == f else 0.0, time.process_time(), time.perf_counter()
                        read_pass(path)
                        tot[path][0] += size
                        tot[path][1] += time.perf_counter() - t0
                        tot[path][2] += time.process_time() - c0 + ((proc_cpu(p.pid) - s0) if path == f else 0.0)
                    for path in ((local, f) if i % 2 == 0 else (f, local)):
                        n, wall, cpu = dd_pass(path, p.pid if path == f else None)
                        dd[path][0] += n
                        dd[path][1] += wall
                        dd[path][2] += cpu
                    loads.append(os.getloadavg()[0])
                if mode == "direct-1m":
                    folios, huge = "none (direct_io)", "-"
                    shared_mmap = mmap_outcome(f)
                else:
                    folios = folio_summary(page_cache_folios(f))
                    huge = folio_summary(hugepage_fault_folios(f, drop_cache)) if mode != "passthrough" else "-"
                bdi = bdi_settings(mp)
            finally:
                subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
                p.wait(timeout=30)
            m, loc = tot[f], tot[local]
            dm, dl = dd[f], dd[local]
            got = json.loads(counts.read_text()) if counts.is_file() else {}
            rows.append(f"| {labels[mode]} | {m[0] / MB / m[1]:,.0f} | {loc[0] / MB / loc[1]:,.0f} | {loc[1] / m[1]:.0%} "
                        f"| {m[0] / MB / m[2]:,.0f} | {loc[0] / MB / loc[2]:,.0f} | **{loc[2] / m[2]:.0%}** "
                        f"| {dm[0] / MB / dm[1]:,.0f} | {dl[0] / MB / dl[1]:,.0f} | **{dl[2] / dm[2]:.0%}** | {folios} |")
            notes.append(f"{labels[mode]}: requests over the cold pass, all warm passes and the mmap re-fault: "
                         + (", ".join(f"{k} {v}" for k, v in sorted(got.items())) or "none")
                         + f"; the mount's bdi: {bdi}"
                         + (f"; faulted back in through mmap + MADV_HUGEPAGE: {huge}" if huge != "-" else "")
                         + (f"; a MAP_SHARED mmap of the file (safetensors' safe_open maps so): {shared_mmap}"
                            if mode == "direct-1m" else ""))
            print(rows[-1], flush=True)
        local_folios = folio_summary(page_cache_folios(local))
        local_huge = folio_summary(hugepage_fault_folios(local, drop_cache))
    finally:
        for mp in work.glob("mnt-*"):
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()[0]
    cmd = "python benchmarks/probe_fuse_passthrough.py" + (f" --rounds {args.rounds}" if args.rounds != 4 else "") + (
        f" --modes {args.modes}" if args.modes != "cache-128k,cache-1m" else "") + (
        f" --libfuse317 {args.libfuse317}" if args.libfuse317 else "")
    text = "\n".join([
        f"# FUSE warm reads on this kernel: page cache vs passthrough vs local disk ({dt.date.today().isoformat()})", "",
        f"Command: `{cmd}`  ",
        f"Machine: dev VM: {desc}, shared (load average {load0:.1f} at start, {load1:.1f} at end, "
        f"{min(loads):.1f}-{max(loads):.1f} over the rounds); kernel {os.uname().release}; ext4 on the VM's virtio disk  ",
        f"libfuse: {libfuse_version(None)} (system) for the page-cache rows"
        + (f", {libfuse_version(args.libfuse317)} ({args.libfuse317}) for passthrough" if args.libfuse317 else "")
        + f"; file: SmolLM2-135M-Instruct model.safetensors, {size / MB:,.1f} MB; {2 * args.rounds} warm passes "
        "of 16 MiB python reads and as many of `dd bs=1M` each way per row, mount and local in turns", "",
        "| a bare FUSE file system serving the file's bytes | python: mount MB/s | local MB/s | wall: mount / local "
        "| mount MB per CPU s | local MB per CPU s | **python per CPU s: mount / local** "
        "| dd: mount MB/s | local MB/s | **dd per CPU s: mount / local** | mount's page cache |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|", *rows, "",
        f"Local file's page cache after its passes: {local_folios}; dropped and faulted back in through mmap + "
        f"MADV_HUGEPAGE: {local_huge}. CPU seconds: the reader's (or dd's) plus the FUSE server's.  ",
        *[n + ".  " for n in notes], ""])
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mount_passthrough_{slug}.md"
    prepend(out, text + "\n")  # earlier runs stay below
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
