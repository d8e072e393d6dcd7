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
