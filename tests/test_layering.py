"""DESIGN.md's layering, checked on the source: cli -> deltastore -> {codec, kernels}, kernels ->
codec, codec -> torch only; and everything imported through the one ``deltastore`` namespace
(a bare ``import codec`` works only from a checkout and would load a second copy of the registry)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", re.M)


def imports(folder: str) -> list[tuple[str, str]]:
    out = []
    for p in sorted((ROOT / folder).rglob("*.py")):
        for m in IMPORT.finditer(p.read_text()):
            out.append((str(p.relative_to(ROOT)), m.group(1)))
    return out


@pytest.mark.parametrize("folder", ["deltastore", "codec", "kernels", "cli", "migrations", "benchmarks", "tests"])
def test_no_bare_layer_imports(folder: str) -> None:
    bad = [(f, m) for f, m in imports(folder) if m.split(".")[0] in {"codec", "kernels", "cli", "migrations"}]
    assert not bad, f"import these as deltastore.<layer>: {bad}"


def test_codec_imports_no_other_layer() -> None:
    bad = [(f, m) for f, m in imports("codec") if m.startswith("deltastore") and not m.startswith("deltastore.codec")]
    assert not bad


def test_kernels_import_only_codec() -> None:
    bad = [(f, m) for f, m in imports("kernels")
           if m.startswith("deltastore") and not m.startswith(("deltastore.kernels", "deltastore.codec"))]
    assert not bad


def test_nothing_imports_the_cli() -> None:
    bad = [(f, m) for folder in ("deltastore", "codec", "kernels") for f, m in imports(folder) if m.startswith("deltastore.cli")]
    assert not bad
