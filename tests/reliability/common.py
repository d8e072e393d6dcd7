"""Helpers for the reliability tests: source models on disk, a store's full state, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deltastore

from ..conftest import finetune_of, llama_like, tree_hashes, write_model

REPO = Path(__file__).resolve().parents[2]


def make_sources(d: Path) -> Path:
    """Three bases and two fine-tunes of the first, tiny (a few hundred KiB each)."""
    b0, b1 = llama_like(0, hidden=32), llama_like(5, hidden=32)
    write_model(d / "base0", b0)
    write_model(d / "base1", b1, shards=2)
    write_model(d / "base2", llama_like(9, hidden=32))
    write_model(d / "ft0", finetune_of(b0, seed=1))
    write_model(d / "ft1", finetune_of(b0, seed=2, touch_norms=True))
    return d


def run_op(home: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m tests.reliability.ops HOME ARGS...`` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "tests.reliability.ops", str(home), *args], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def stray_keys(st: deltastore.Store) -> list[str]:
    """Everything on the backend that no committed version needs: objects, temp files, records."""
    reach: set[str] = set()
    refs = set()
    for m in st.models():
        for v in st.versions(m.name):
            refs.add((v.model, v.number))
            reach.add(v.manifest)
            reach |= st.manifest(v.manifest).object_ids()
    out = []
    for key in st.backend.list("objects"):
        parts = key.split("/")
        if len(parts) != 3 or f"sha256:{parts[1]}{parts[2]}" not in reach:
            out.append(key)
    for key in st.backend.list("catalog/versions"):
        parts = key.split("/")
        if len(parts) != 4 or (parts[2], int(parts[3][1:].split(".")[0]) if parts[3][1:].split(".")[0].isdigit() else -1) not in refs:
            out.append(key)
    return out


def assert_checkouts_exact(st: deltastore.Store, srcdir: Path, out: Path) -> int:
    """Every version checks out byte-identical to the directory it was added from (its message)."""
    n = 0
    for m in st.models():
        for v in st.versions(m.name):
            dest = out / f"{v.model}-v{v.number}"
            st.checkout(v.ref, dest, overwrite=True)
            assert tree_hashes(dest) == tree_hashes(srcdir / v.message), v.ref
            n += 1
    return n
