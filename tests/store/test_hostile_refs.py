"""REFs whose version number no catalog can hold: one UnknownRefError naming the REF (the CLI's one
line), not SQLite's OverflowError or Python's digit-limit ValueError, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltastore.errors import UnknownRefError
from deltastore.refs import parse_ref

from ..conftest import llama_like, write_model


@pytest.mark.parametrize("digits", ["9" * 20, "9" * 5000, "2147483648"])
def test_a_version_number_too_large_is_an_unknown_ref(store, tmp_path: Path, digits: str) -> None:
    store.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)))
    ref = f"b@v{digits}"
    with pytest.raises(UnknownRefError, match="bad REF 'b@v9|bad REF 'b@v2"):
        parse_ref(ref)
    for op in (lambda: store.resolve(ref), lambda: store.checkout(ref, tmp_path / "out"), lambda: store.lineage(ref)):
        with pytest.raises(UnknownRefError, match="too large"):
            op()
    assert not (tmp_path / "out").exists()
    assert [v.ref for v in store.versions("b")] == ["b@v1"]


def test_the_largest_number_a_version_can_have_still_parses() -> None:
    assert parse_ref("b@v2147483647").version == 2**31 - 1
    assert parse_ref("b@v007").version == 7


@pytest.mark.parametrize("rev", ["v\u0661", "v\u0661\u0662", "v\U0001d7d9", "v\u00b2", "v1\n", "\u0661", "abcdef\n", "prod\n"])
def test_a_ref_in_other_digits_or_with_a_newline_is_a_bad_ref(store, tmp_path: Path, rev: str) -> None:
    """\\d takes Arabic-Indic digits (and int() reads them) and $ matches before a final newline:
    'b@v\u0661' and 'b@v1\\n' named b@v1, which nobody wrote. Now each is one bad-REF error, from
    the API and from the CLI, and resolves to nothing."""
    from tests.clirun import cli

    store.add_base("b", write_model(tmp_path / "b", llama_like(0, hidden=16, layers=1)), tags=["prod"])
    ref = f"b@{rev}"
    for op in (lambda: parse_ref(ref), lambda: store.resolve(ref), lambda: store.checkout(ref, tmp_path / "out")):
        with pytest.raises(UnknownRefError, match="^bad REF "):
            op()
    assert not (tmp_path / "out").exists()
    p = cli("show", ref, "--home", str(tmp_path / "home"))
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    assert p.stderr.startswith("deltastore: error: bad REF ") and p.stdout == ""
    assert [v.ref for v in store.versions("b")] == ["b@v1"]
    assert parse_ref("b@v1").version == 1 and parse_ref("b@prod").tag == "prod" and store.resolve("b@prod").number == 1
