"""The safetensors reader never trusts a file: random bytes, mutated headers and headers whose
fields lie (wrong types, huge or negative numbers, overlapping offsets, sizes that disagree with
the file) give BadSafetensorsError (a BadInputError the CLI prints as one line), or a header whose
tensors tile the data exactly. 1000 cases per property."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltastore.errors import BadSafetensorsError
from deltastore.safetensors_io import DTYPES, build_header, parse_header, read_header

CASES = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID, _ = build_header([("a.weight", "BF16", (3, 4)), ("b.bias", "F32", (5,)), ("c", "I64", (2, 2))], {"format": "pt"})
VALID_SIZE = len(VALID) + 3 * 4 * 2 + 5 * 4 + 4 * 8

numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=4))
fields = st.one_of(numbers, st.lists(numbers, max_size=4), st.dictionaries(st.text(max_size=3), numbers, max_size=2))
specs = st.fixed_dictionaries({}, optional={
    "dtype": st.one_of(st.sampled_from(sorted(DTYPES)), st.text(max_size=4), numbers),
    "shape": st.one_of(st.lists(st.integers(-3, 2**40), max_size=4), fields),
    "data_offsets": st.one_of(st.lists(st.integers(-3, 2**41), min_size=2, max_size=2), fields),
})


def parse(raw: bytes, size: int | None):  # noqa: ANN201
    try:
        h = parse_header(raw, size, "hostile.safetensors")
    except BadSafetensorsError:
        return None
    pos = 0  # what a parsed header promises: tensors tile the data, in order, from byte 0
    for t in h.tensors:
        assert t.start == pos and t.end - t.start == t.nbytes
        pos = t.end
    if size is not None:
        assert size == h.data_start + pos
    return h


@CASES
@given(st.binary(max_size=200), st.one_of(st.none(), st.integers(0, 10**6)))
def test_random_bytes(raw: bytes, size: int | None) -> None:
    parse(raw, size)


@CASES
@given(st.dictionaries(st.text(max_size=6), st.one_of(specs, fields), max_size=4), st.one_of(st.none(), st.integers(0, 2**42)),
       st.integers(0, 2**64 - 1) | st.none())
def test_lying_fields(head: dict, size: int | None, prefix: int | None) -> None:
    body = json.dumps(head).encode()
    n = len(body) if prefix is None else prefix
    parse(struct.pack("<Q", n) + body, size)


@CASES
@given(st.data())
def test_mutated_valid_header(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    size = data.draw(st.sampled_from([None, VALID_SIZE, VALID_SIZE - 1, VALID_SIZE + 1, 0]))
    parse(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw), size)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.binary(max_size=120), st.binary(max_size=64))
def test_files_on_disk(tmp_path: Path, head: bytes, tail: bytes) -> None:
    p = tmp_path / "model.safetensors"
    p.write_bytes(head + tail)
    try:
        read_header(p)
    except BadSafetensorsError:
        pass


def test_deep_nesting_is_refused() -> None:
    body = b"[" * 100_000
    try:
        parse_header(struct.pack("<Q", len(body)) + body, None, "deep")
    except BadSafetensorsError as e:
        assert "JSON" in str(e)
    else:  # pragma: no cover
        raise AssertionError("a header nested 100,000 deep was accepted")
