"""Push and pull speed to a loopback SeaweedFS S3 server against a plain s3fs bulk copy of the same bytes.

    python benchmarks/bench_remotes.py [--repeat N] [--finetune DIR] [--out FILE]

One run, one server: a store gets SmolLM2-135M-Instruct bf16 (deltastore.zoo.smollm2) as a base and
a fine-tune of it (``--finetune DIR``, a real fine-tune directory; without it, a synthetic one:
every linear weight moved by Gaussian noise of 1% of its mean magnitude, stored lossless), then:

  push        ``remotes.push`` of the fine-tune with its base to ``s3://bench/ds`` (every object
              read, decoded and re-hashed before it is sent with a Content-MD5; version records
              created with If-None-Match)
  re-push     the same push again: nothing to send (existence checks only)
  pull        ``remotes.pull`` into an empty store (every object re-hashed before it is written,
              fsynced; versions committed to its SQLite catalog)
  s3fs put    ``S3FileSystem.put`` of the same object files (lists of paths: s3fs's own
              concurrency) to ``s3://bench/bulk``: bytes only, no checks
  s3fs get    ``S3FileSystem.get`` of those back to a local directory

MB/s are the objects' stored bytes (10^6 B) over wall-clock seconds. The S3 server runs on the same
machine and shares its cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))  # (last: ./kernels must not shadow HF's kernels package)


def _load() -> str:
    return "%.1f" % os.getloadavg()[0]


def synthetic_finetune(base_dir: Path, out: Path) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(base_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for k, v in sd.items():
        if v.ndim == 2 and "embed" not in k:
            f = v.float()
            sd[k] = (f + 0.01 * f.abs().mean() * torch.randn(f.shape, generator=g)).to(v.dtype)
    out.mkdir(parents=True, exist_ok=True)
    for p in base_dir.iterdir():
        if p.name != "model.safetensors":
            shutil.copy(p, out / p.name)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--finetune", type=Path, help="A real fine-tune directory of SmolLM2-135M-Instruct bf16.")
    ap.add_argument("--out", type=Path, help="Write the markdown table here.")
    ap.add_argument("--repeat", type=int, default=2, help="Runs, interleaved; the table shows the best (all in the last column).")
    a = ap.parse_args()

    import s3fs

    import deltastore
    from deltastore import remotes
    from deltastore.objects import key_of
    from deltastore.zoo.smollm2 import smollm2_dir
    from tests.s3 import SeaweedServer

    load0 = _load()
    tmp = Path(tempfile.mkdtemp(prefix="bench-remotes-"))
    server = SeaweedServer()
    try:
        opts = server.start(bucket="bench")
        os.environ.update(server.env())
        base = smollm2_dir()
        ft = a.finetune or synthetic_finetune(base, tmp / "ft")
        ft_what = f"{a.finetune.name} (real fine-tune)" if a.finetune else "synthetic (1% noise on every linear)"
        st = deltastore.open(tmp / "a")
        st.add_base("smollm2", base)
        st.add_finetune("smollm2-ft", ft, base="smollm2", codec="lossless")
        oids = sorted(st.manifest("smollm2").object_ids() | st.manifest("smollm2-ft").object_ids()
                      | {st.resolve("smollm2").manifest, st.resolve("smollm2-ft").manifest})
        files = [Path(st.backend.root) / key_of(o) for o in oids]
        nbytes = sum(p.stat().st_size for p in files)
        runs: dict[str, list[float]] = {k: [] for k in ("push", "repush", "pull", "put", "get")}
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        for i in range(a.repeat):  # interleaved, each into a fresh prefix / store / directory
            url = f"s3://bench/ds{i}"
            t = time.perf_counter()
            r = remotes.push(st, "smollm2-ft", url)[0]
            runs["push"].append(time.perf_counter() - t)
            assert r.bytes_sent == nbytes and r.objects_sent == len(oids), (r.bytes_sent, nbytes)
            t = time.perf_counter()
            again = remotes.push(st, "smollm2-ft", url)[0]
            runs["repush"].append(time.perf_counter() - t)
            assert again.objects_sent == 0

            b = deltastore.open(tmp / f"b{i}")
            t = time.perf_counter()
            p = remotes.pull(b, "smollm2-ft", url)[0]
            runs["pull"].append(time.perf_counter() - t)
            assert p.bytes_sent == nbytes
            b.close()

            remote_paths = [f"bench/bulk{i}/{key_of(o)}" for o in oids]
            t = time.perf_counter()
            fs.put([str(f) for f in files], remote_paths)
            runs["put"].append(time.perf_counter() - t)
            back = tmp / f"bulk-get{i}"
            t = time.perf_counter()
            fs.get(remote_paths, [str(back / key_of(o)) for o in oids])
            runs["get"].append(time.perf_counter() - t)
            got = sum(p.stat().st_size for p in back.rglob("*") if p.is_file())
            assert got == nbytes, (got, nbytes)
        labels = {"push": ("deltastore push (fine-tune + base)", len(oids), nbytes),
                  "repush": ("deltastore re-push (nothing to send)", 0, 0),
                  "pull": ("deltastore pull (fine-tune + base)", len(oids), nbytes),
                  "put": ("s3fs put, same object files (bulk copy)", len(oids), nbytes),
                  "get": ("s3fs get, same object files (bulk copy)", len(oids), nbytes)}
        rows = [(*labels[k], min(v), v) for k, v in runs.items()]
        push_s, pull_s, put_s, get_s = (min(runs[k]) for k in ("push", "pull", "put", "get"))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    import fsspec
    import torch

    lines = [
        f"# deltastore push/pull to S3 vs a plain s3fs bulk copy ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python benchmarks/bench_remotes.py --repeat {a.repeat}{' --finetune ' + str(a.finetune) if a.finetune else ''}"
        f"{' --out ' + str(a.out) if a.out else ''}`  ",
        f"Machine: dev VM: AMD EPYC 2 cores, shared with other engineers' jobs ({platform.processor() or platform.machine()}); "
        f"load average {load0} at start, {_load()} at end. S3: SeaweedFS 4.48 `weed mini` on loopback, same cores.  ",
        f"Python {platform.python_version()}, torch {torch.__version__}, s3fs {s3fs.__version__}, fsspec {fsspec.__version__}  ",
        f"Models: SmolLM2-135M-Instruct bf16 base (lossless) + fine-tune {ft_what}, stored lossless against it.",
        "",
        "| what | objects | MB | seconds (best) | MB/s (best) | seconds, each run |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for what, n, nb, s, each in rows:
        every = ", ".join(f"{x:.2f}" for x in each)
        lines.append(f"| {what} | {n} | {nb / 1e6:.1f} | {s:.2f} | {nb / 1e6 / s:.1f} | {every} |" if nb
                     else f"| {what} | {n} | 0 | {s:.2f} | - | {every} |")
    ratios = "; ".join(f"run {i + 1}: push/put {runs['push'][i] / runs['put'][i]:.2f}x, pull/get {runs['pull'][i] / runs['get'][i]:.2f}x"
                       for i in range(a.repeat))
    lines += ["", f"Best times: push / s3fs put {push_s / put_s:.2f}x; pull / s3fs get {pull_s / get_s:.2f}x ({ratios}) "
              "(goal: within 1.2x). deltastore also decodes and re-hashes every object and, on pull, fsyncs each "
              "file and commits the versions; s3fs moves bytes only. The machine was shared and loaded (see the load "
              "average): compare the rows of one run, not these MB/s with another machine's."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
