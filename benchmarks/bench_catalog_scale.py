"""Catalog queries at scale: 100 models x 100 versions on SQLite (and PostgreSQL with --pg).

    python benchmarks/bench_catalog_scale.py [--models 100] [--versions 100] [--pg] [--baseline REV] [--out FILE]

One real base and one real lossless fine-tune are added through the store (tiny llama-shaped
models, tests/conftest.py); then the catalog is filled in bulk with rows shaped like what
``commit_version`` writes (each model a chain: v1 a fine-tune of the real base, vN of v(N-1); every
version indexing the fine-tune's manifest objects), because ten thousand adds would take hours
here. Then the public Store calls behind the commands are timed: ``ls`` (models), ``log NAME``
(versions), resolving ``NAME@vN`` / ``NAME@latest``, ``show`` (report.version_report) and
``lineage`` of a chain's first version (100 descendants). Median of 5 calls each, in ms.

``--baseline REV`` also times ``resolve`` and ``lineage`` as deltastore/lookup.py and versions.py
were at git revision REV, on the same catalog and engine, each call interleaved with the current
one: on a shared machine whose load swings, only rows of one run compare.
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
sys.path.append(str(ROOT))  # (last: ./kernels must not shadow HF's kernels package)


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


def baseline_modules(rev: str):  # noqa: ANN201
    """deltastore/lookup.py and versions.py as they were at ``rev``, loaded beside the current ones
    (the old versions module wired to the old lookup)."""
    import importlib.util
    import subprocess

    mods = {}
    for name in ("lookup", "versions"):
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:deltastore/{name}.py"], check=True,
                             capture_output=True, text=True).stdout
        spec = importlib.util.spec_from_loader(f"deltastore._baseline_{name}", loader=None)
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = "deltastore"
        sys.modules[spec.name] = mod
        if name == "versions":
            src = src.replace("from .lookup import", "from ._baseline_lookup import")
        exec(compile(src, f"{rev}:deltastore/{name}.py", "exec"), mod.__dict__)
        mods[name] = mod
    return mods["lookup"], mods["versions"]


def timings(st, n_models: int, n_versions: int, baseline: str | None = None) -> dict[str, float]:
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
    if baseline:
        old_lookup, old_versions = baseline_modules(baseline)

        def old_resolve(ref: str):  # noqa: ANN202
            with st.Session() as s:
                return old_lookup.version_info(s, old_lookup.resolve_version(s, ref))

        calls[f"resolve {mid}@v{n_versions // 2}, as at {baseline}"] = lambda: old_resolve(f"{mid}@v{n_versions // 2}")
        calls[f"lineage {mid}@v1, as at {baseline}"] = lambda: old_versions.lineage(st, f"{mid}@v1")
    for fn in calls.values():
        fn()  # warm: the first call opens connections and caches the manifest
    ts: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(5):  # interleaved: a swing in the machine's load hits every call alike
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            ts[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(x) for name, x in ts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--pg", action="store_true", help="Also on a PostgreSQL server (tests/pg.py).")
    ap.add_argument("--baseline", help="Also time resolve and lineage as lookup.py/versions.py were at this git revision.")
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
            results[name] = timings(st, a.models, a.versions, a.baseline)
            st.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    names = list(urls)
    lines = [f"# Catalog at scale: {a.models} models x {a.versions} versions ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/bench_catalog_scale.py{' --pg' if a.pg else ''}"
             f"{' --baseline ' + a.baseline if a.baseline else ''}"
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
