"""DESIGN.md's layering, checked on the source: cli -> deltastore -> {codec, kernels}, kernels ->
codec, codec -> torch only; and everything imported through the one ``deltastore`` namespace
(a bare ``import codec`` works only from a checkout and would load a second copy of the registry)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", re.M)
# relative imports: "from . import x", "from ..store import y", "from .x import (a, b)"
RELATIVE = re.compile(r"^\s*from\s+(\.+)([\w.]*)\s+import\s+\(?\s*([\w, \n]+)", re.M)
#: the installed package each source folder becomes (pyproject's package-dir mapping)
PACKAGE = {"deltastore": "deltastore", "codec": "deltastore.codec", "kernels": "deltastore.kernels",
           "cli": "deltastore.cli", "migrations": "deltastore.migrations"}


def _package_of(p: Path) -> str | None:
    rel = p.relative_to(ROOT).with_suffix("").parts
    top = PACKAGE.get(rel[0])
    if top is None:
        return None
    parts = top.split(".") + list(rel[1:])
    return ".".join(parts if p.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


def resolve_relative(p: Path, dots: str, module: str, names: str) -> list[str]:
    """Absolute module names a relative import in file ``p`` reaches (each imported name is
    counted as a possible submodule of ``from . import x``)."""
    pkg = _package_of(p)
    if pkg is None:
        return []
    parts = pkg.split(".")
    up = len(dots) - 1
    if up >= len(parts):
        return ["<above the top package>"]
    base = ".".join(parts[: len(parts) - up])
    if module:
        return [f"{base}.{module}"]
    return [f"{base}.{n.strip()}" for n in names.replace("\n", ",").split(",") if n.strip() and n.strip() != "as"]


def imports(folder: str) -> list[tuple[str, str]]:
    """(file, absolute module) for every import in a folder, relative ones resolved."""
    out = []
    for p in sorted((ROOT / folder).rglob("*.py")):
        text = p.read_text()
        for m in IMPORT.finditer(text):
            out.append((str(p.relative_to(ROOT)), m.group(1)))
        for m in RELATIVE.finditer(text):
            for mod in resolve_relative(p, m.group(1), m.group(2), m.group(3)):
                out.append((str(p.relative_to(ROOT)), mod))
    return out


def test_relative_imports_are_resolved() -> None:
    """The checks below see ``from ..store import x`` as deltastore.store, or they check nothing."""
    mods = {m for _, m in imports("deltastore")}
    assert "deltastore.store" in mods or "deltastore.materialize" in mods  # the facade's own relative imports
    assert resolve_relative(ROOT / "codec" / "lossless.py", "..", "store", "x") == ["deltastore.store"]
    assert resolve_relative(ROOT / "deltastore" / "calibrate" / "tuning.py", "..", "errors", "x") == ["deltastore.errors"]
    assert resolve_relative(ROOT / "kernels" / "linear.py", ".", "", "packed, ref_ops") == [
        "deltastore.kernels.packed", "deltastore.kernels.ref_ops"]


@pytest.mark.parametrize("folder", ["deltastore", "codec", "kernels", "cli", "migrations", "benchmarks", "tests"])
def test_no_bare_layer_imports(folder: str) -> None:
    bad = [(f, m) for f, m in imports(folder) if m.split(".")[0] in {"codec", "kernels", "cli", "migrations"}]
    assert not bad, f"import these as deltastore.<layer>: {bad}"


def test_codec_imports_no_other_layer() -> None:
    bad = [(f, m) for f, m in imports("codec") if m.startswith(("deltastore", "<")) and not m.startswith("deltastore.codec")]
    assert not bad


def test_kernels_import_only_codec() -> None:
    bad = [(f, m) for f, m in imports("kernels")
           if m.startswith(("deltastore", "<")) and not m.startswith(("deltastore.kernels", "deltastore.codec"))]
    assert not bad


def test_nothing_imports_the_cli() -> None:
    bad = [(f, m) for folder in ("deltastore", "codec", "kernels") for f, m in imports(folder) if m.startswith("deltastore.cli")]
    assert not bad
