"""Reading versions through `deltastore mount` against reading a checked-out copy from local disk.

    python benchmarks/bench_mount.py [--finetunes N] [--synth] [--out FILE]
    python benchmarks/bench_mount.py --ls N      # only: `ls -lR` over a mount of N versions

Store: SmolLM2-135M-Instruct bf16 (deltastore.zoo.smollm2) as a lossless base, a real full
fine-tune of it (the cached `smollm2-math-series-*` step directories, else a perturbed copy) added
twice, once `--codec lossless` and once delta-come (the default lossy codec), and N delta-come
fine-tunes in all for the disk figure. With --synth also the synthetic llama-shaped ~1B bf16 model
of bench_store.py as a lossless base (slow on a small VM: off by default).

Rows, for each version's model.safetensors:
  mount cold            the file's and every object's kernel page cache dropped (posix_fadvise
                        DONTNEED), none of the file's own units decoded yet: fetch + decode +
                        verify + FUSE. Rows run in order in one mount process, so the fine-tunes
                        find the base's tensors already decoded (as on a cluster that mounts a
                        base and its fine-tunes), and apply their deltas to those.
  mount warm (decoded)  again, decoded units in the mount's cache, the kernel's copy dropped:
                        what FUSE and the server cost per byte
  mount warm (page)     again without dropping: the kernel's page cache serves it
  local cold / warm     the checked-out file, page cache dropped / kept
  checkout then read    `Store.checkout` to local disk, then one read of the file
Reads are one sequential pass with 16 MiB read() calls, MB/s of file bytes (10^6 B), wall clock.
Then `from_pretrained` (transformers, CPU, the model's own dtype) from the mount (fresh mount, and
again warm) against from the local checkout, and the disk the versions take: the store's objects
(what a mount needs) against N checked-out directories (measured with `du`).
This is a 2-core shared VM: figures move with the other work on the machine (load average shown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_store import machine, synth_1b  # noqa: E402

import deltastore  # noqa: E402
from deltastore.zoo.cache import cache_dir  # noqa: E402

MB = 1e6
BLOCK = 16 << 20


def drop_cache(paths: list[Path]) -> None:
    """Evict these files from the kernel page cache (only them: the machine is shared)."""
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def object_files(home: Path) -> list[Path]:
    return [p for p in (home / "objects").rglob("*") if p.is_file()]


def proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far, all its threads."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_cpu_rate(path: Path, server: int | None) -> float:
    """MB of file per CPU second spent on one sequential pass: the reader's own CPU time plus the
    mount server's (``server``), so the figure holds up when other work shares the machine."""
    c0, s0 = time.process_time(), proc_cpu(server)
    _, _ = read_rate(path)
    cpu = time.process_time() - c0 + proc_cpu(server) - s0
    return path.stat().st_size / MB / max(cpu, 1e-9)


def read_rate(path: Path) -> tuple[float, float]:
    """(MB/s, seconds) of one sequential pass."""
    n = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while True:
            k = f.readinto(view)
            if not k:
                break
            n += k
    sec = time.perf_counter() - t0
    return n / MB / sec, sec


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DELTASTORE_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "deltastore.cli", *args], env=env, capture_output=True, text=True, check=True)


def mount(home: Path, mp: Path, log: Path) -> None:
    mp.mkdir(parents=True, exist_ok=True)
    cli(home, "mount", str(mp), "--cache-size", "4GiB", "--log", str(log))


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
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in cmd and str(mp).encode() in cmd and b"--foreground" in cmd:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return None


def finetune_sources(n: int, base: Path, work: Path) -> list[Path]:
    series = sorted(p for d in cache_dir("bench").glob("smollm2-math-series-*") for p in d.glob("step*")
                    if (p / "model.safetensors").is_file())
    out = series[:n]
    seed = 0
    while len(out) < n:  # perturbed copies of the base for the disk figure
        from deltastore.zoo.tiny import tiny_finetune

        seed += 1
        out.append(tiny_finetune(base, work / f"perturbed{seed}", seed=seed, scale=5e-3))
    return out


def from_pretrained_seconds(path: Path) -> float:
    code = ("import sys, time, torch\nfrom transformers import AutoModelForCausalLM\nt0 = time.perf_counter()\n"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\nprint(time.perf_counter() - t0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def ls_bench(n: int, slug: str, desc: str) -> str:
    """``ls -lR`` of a mount holding one model with ``n`` versions (a tiny Llama added ``n`` times
    with a different config.json each time, so every version has a manifest of its own)."""
    import json

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--finetunes", type=int, default=2, help="delta-come fine-tunes for the disk figure (default 2)")
    ap.add_argument("--synth", action="store_true", help="also the synthetic 1B model (slow here)")
    ap.add_argument("--out", default=None)
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
    load0 = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-mount-"))
    home, mp = work / "home", work / "mnt"
    lines: list[str] = []
    try:
        from deltastore.zoo.smollm2 import smollm2_dir

        base = smollm2_dir()
        fts = finetune_sources(max(args.finetunes, 1), base, work)
        t0 = time.perf_counter()
        with deltastore.open(home) as st:
            st.add_base("smollm2", base)
            st.add_finetune("ft-lossless", fts[0], "smollm2", codec="lossless")
            for i, d in enumerate(fts):
                st.add_finetune(f"ft{i + 1}", d, "smollm2")  # delta-come
            if args.synth:
                st.add_base("synth1b", synth_1b())
        print(f"store built in {time.perf_counter() - t0:.0f} s", flush=True)
        versions = [("SmolLM2-135M base, lossless", "smollm2"), ("SmolLM2 fine-tune, lossless", "ft-lossless"),
                    ("SmolLM2 fine-tune, delta-come", "ft1")]
        if args.synth:
            versions.append(("synthetic 1B bf16, lossless", "synth1b"))
        objs = object_files(home)
        rows = []
        mount(home, mp, work / "mount.log")
        try:
            for label, name in versions:
                f = mp / name / "v1" / "model.safetensors"
                co = work / "co" / name
                t0 = time.perf_counter()
                with deltastore.open(home) as st:
                    st.checkout(name, co)
                co_sec = time.perf_counter() - t0
                local = co / "model.safetensors"
                size = local.stat().st_size
                drop_cache(objs + [f])
                cold, _ = read_rate(f)
                drop_cache([f])
                warm_dec, _ = read_rate(f)
                warm_page, _ = read_rate(f)
                drop_cache([local])
                local_cold, _ = read_rate(local)
                local_warm, _ = read_rate(local)
                _, rd = read_rate(local)
                pid = server_pid(mp)
                drop_cache([f])
                cpu_mount = read_cpu_rate(f, pid)  # decoded cache warm, page cache dropped
                drop_cache([local])
                cpu_local = read_cpu_rate(local, None)
                rows.append((label, size, cold, warm_dec, warm_page, local_cold, local_warm, size / MB / (co_sec + rd),
                             cpu_mount, cpu_local))
                print(rows[-1], flush=True)
            rss = server_rss(mp)
        finally:
            unmount(home, mp)
        # from_pretrained: a fresh mount (cold) and again (warm) against the local checkout
        fp = []
        mount(home, mp, work / "mount.log")
        try:
            for label, name in versions[1:3]:
                drop_cache(objs)
                cold = from_pretrained_seconds(mp / name / "v1")
                warm = from_pretrained_seconds(mp / name / "v1")
                local = from_pretrained_seconds(work / "co" / name)
                fp.append((label, cold, warm, local))
                print(fp[-1], flush=True)
        finally:
            unmount(home, mp)
        # disk: the store (base + every fine-tune) against one checkout per fine-tune plus the base
        with deltastore.open(home) as st:
            for i in range(len(fts)):
                dest = work / "co-ft" / f"ft{i + 1}"
                if not dest.exists():
                    st.checkout(f"ft{i + 1}", dest)
            ft_store = sum(st.resolve(r).stored_bytes for r in ["smollm2", *(f"ft{i + 1}" for i in range(len(fts)))])
        all_objects = du(home / "objects")
        ft_co = du(work / "co-ft") + du(work / "co" / "smollm2")
        load1 = os.getloadavg()[0]

        today = dt.date.today().isoformat()
        cmd = "python benchmarks/bench_mount.py" + (f" --finetunes {args.finetunes}" if args.finetunes != 2 else "") + \
              (" --synth" if args.synth else "")
        lines += [f"# deltastore mount: reading versions as files vs a local checkout ({today})", "",
                  f"Command: `{cmd}`  ",
                  f"Machine: dev VM: {desc}, shared (load average {load0:.1f} at start, {load1:.1f} at end); "
                  "local disk is the VM's virtio disk  ",
                  f"FUSE: libfuse3 via mfusepy; mount with --cache-size 4GiB, read_ahead_kb 16384; server peak RSS "
                  f"{(rss or 0) / 2**20:,.0f} MiB (torch imported)", "",
                  "| model.safetensors of | MB | mount cold | mount warm (decoded cache) | mount warm (page cache) "
                  "| local disk cold | local disk warm | checkout then read | mount warm (decoded), MB per CPU s "
                  "| local disk cold, MB per CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, size, cold, wd, wp, lc, lw, cr, cm, cl in rows:
            lines.append(f"| {label} | {size / MB:,.1f} | {cold:,.0f} | {wd:,.0f} | {wp:,.0f} | {lc:,.0f} | {lw:,.0f} "
                         f"| {cr:,.0f} | {cm:,.0f} | {cl:,.0f} |")
        lines += ["", "MB/s of file bytes, one sequential pass with 16 MiB reads, wall clock. Cold: none of the file's own "
                  "units decoded yet, the file's and all objects' page cache dropped (posix_fadvise); rows run in "
                  "order in one mount, so the fine-tunes find the base's tensors decoded by the first row. Warm (decoded cache): "
                  "units already decoded in the mount process, the kernel's copy dropped. Local: the checked-out "
                  "file. Checkout then read: `checkout` of the version plus one read of the file. MB per CPU s: file "
                  "bytes over the CPU seconds the pass cost, the reader's plus the mount server's (all threads), "
                  "measured on a separate pass; it does not move with the load of other work the way wall-clock "
                  "MB/s does on this shared VM.", "",
                  "| from_pretrained of | mount, fresh (s) | mount, warm (s) | local checkout (s) | mount fresh / local |",
                  "|---|---:|---:|---:|---:|"]
        for label, cold, warm, local in fp:
            lines.append(f"| {label} | {cold:.2f} | {warm:.2f} | {local:.2f} | {cold / local:.2f}x |")
        n = len(fts)
        lines += ["", "`AutoModelForCausalLM.from_pretrained(DIR)` in a fresh Python process (import time excluded), CPU.",
                  "", f"Disk for the base plus {n} delta-come fine-tune(s) (+1 lossless fine-tune in the store): "
                  f"stored bytes of those versions {ft_store / MB:,.1f} MB (all a mount needs) vs checked out "
                  f"(base + {n} fine-tunes) {ft_co / MB:,.1f} MB ({ft_co / max(ft_store, 1):.1f}x); the whole objects "
                  f"folder, with the lossless fine-tune{' and the 1B model' if args.synth else ''}, {all_objects / MB:,.1f} MB.",
                  f"Fine-tune sources: {', '.join(p.parent.name + '/' + p.name for p in fts)}."]
        text = "\n".join(lines) + "\n"
        out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"mount_{slug}.md"
        out.write_text(text)
        print(text)
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
