"""Catalog queries at scale: 100 models x 100 versions on SQLite (and PostgreSQL with --pg).

    python benchmarks/bench_catalog_scale.py [--models 100] [--versions 100] [--pg] [--out FILE]

One real base and one real lossless fine-tune are added through the store (tiny llama-shaped
models, tests/conftest.py); then the catalog is filled in bulk with rows shaped like what
``commit_version`` writes (each model a chain: v1 a fine-tune of the real base, vN of v(N-1); every
version indexing the fine-tune's manifest objects), because ten thousand adds would take hours
here. Then the public Store calls behind the commands are timed: ``ls`` (models), ``log NAME``
(versions), resolving ``NAME@vN`` / ``NAME@latest``, ``show`` (report.version_report) and
``lineage`` of a chain's first version (100 descendants). Median of 5 calls each, in ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(st, n_models: int, n_versions: int) -> None:
    from sqlalchemy import insert, select

    from deltastore.catalog import Lineage, Model, Version, VersionObject, utcnow

    ft = st.resolve("ft@v1")
    base_id = None
    with st.Session() as s:
        base_id = s.scalar(select(Version.id).join(Model, Model.id == Version.model_id).where(Model.name == "base"))
    oids = sorted(st.manifest(ft.manifest).object_ids() | {ft.manifest})
    with st.Session.begin() as s:
        for m in range(n_models):
            model = Model(name=f"model-{m:03d}")
            s.add(model)
            s.flush()
            parent = base_id
            for n in range(1, n_versions + 1):
                vid = s.execute(insert(Version).values(
                    model_id=model.id, number=n, manifest=ft.manifest, base_version_id=parent, kind="finetune",
                    codec="lossless", codec_params={}, logical_bytes=ft.logical_bytes, stored_bytes=ft.stored_bytes,
                    referenced_bytes=ft.referenced_bytes, message=f"step {n}", author="bench", created_at=utcnow(),
                    metrics={}, calib_sha256=None).returning(Version.id)).scalar_one()
                s.execute(insert(Lineage), [{"parent_id": parent, "child_id": vid, "relation": "base"}])
                s.execute(insert(VersionObject), [{"version_id": vid, "oid": o} for o in oids])
                parent = vid


def timings(st, n_models: int, n_versions: int) -> dict[str, float]:
    from deltastore.report import version_report

    mid = f"model-{n_models // 2:03d}"
    calls = {
        "ls (models)": lambda: st.models(),
        f"log {mid} ({n_versions} versions)": lambda: st.versions(mid),
        f"resolve {mid}@v{n_versions // 2}": lambda: st.resolve(f"{mid}@v{n_versions // 2}"),
        f"resolve {mid}@latest": lambda: st.resolve(f"{mid}@latest"),
        f"show {mid}@v{n_versions}": lambda: version_report(st, f"{mid}@v{n_versions}"),
        f"lineage {mid}@v1 ({n_versions - 1} descendants)": lambda: st.lineage(f"{mid}@v1"),
    }
    out = {}
    for name, fn in calls.items():
        fn()  # warm: the first call opens connections and caches the manifest
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t) * 1000)
        out[name] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--pg", action="store_true", help="Also on a PostgreSQL server (tests/pg.py).")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    import deltastore
    from tests.conftest import finetune_of, llama_like, write_model

    load0 = "%.1f" % os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-catalog-"))
    base = llama_like(0)
    bdir, fdir = write_model(tmp / "b", base), write_model(tmp / "f", finetune_of(base))
    results: dict[str, dict[str, float]] = {}
    fill_s: dict[str, float] = {}
    urls = {"SQLite": None}
    server = None
    try:
        if a.pg:
            from tests.pg import PostgresServer

            server = PostgresServer()
            server.start()
            urls["PostgreSQL"] = server.create_db("scale")
        for name, url in urls.items():
            st = deltastore.open(tmp / f"home-{name}", db_url=url)
            st.add_base("base", bdir)
            st.add_finetune("ft", fdir, base="base", codec="lossless")
            t = time.perf_counter()
            fill(st, a.models, a.versions)
            fill_s[name] = time.perf_counter() - t
            results[name] = timings(st, a.models, a.versions)
            st.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    names = list(urls)
    lines = [f"# Catalog at scale: {a.models} models x {a.versions} versions ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/bench_catalog_scale.py{' --pg' if a.pg else ''}"
             f"{' --out ' + str(a.out) if a.out else ''}`  ",
             f"Machine: dev VM: AMD EPYC 2 cores, shared with other engineers' jobs; load average {load0} at start, "
             f"{os.getloadavg()[0]:.1f} at end. Python {platform.python_version()}.  ",
             "Rows filled in bulk (" + ", ".join(f"{n}: {fill_s[n]:.0f} s" for n in names) + "); each version indexes "
             "the real fine-tune's objects. Median of 5 calls of the Store API behind each command, in ms "
             "(goal: under 50 ms).", "",
             "| call | " + " | ".join(f"{n} ms" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for call in results[names[0]]:
        lines.append(f"| {call} | " + " | ".join(f"{results[n][call]:.1f}" for n in names) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
